"""Offline replay: send recorded requests to a candidate and compare with the recorded answers.

The recorded primary responses (from `facade.recorder`) stand in for the primary; results go to
the same shadow store as live shadowing (marked `source = replay`), so `shadow report` shows them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from facade.compare import Reply
from facade.config import FacadeConfig, load_config
from facade.exceptions import FacadeError
from facade.noise import NoiseModel
from facade.recorder import RECORD_BODY_CAP, RecordedExchange, read_traffic
from facade.shadow import RouteRules, failure_record, judge, route_rules
from facade.shadow_store import ComparisonRecord, ShadowStore, StoreWriter

__all__ = ["ReplayError", "ReplaySummary", "replay_exchanges", "resolve_target", "rules_by_route"]


class ReplayError(FacadeError):
    """Replay cannot start: an unknown upstream, an unreadable file."""


@dataclass
class ReplaySummary:
    """What a replay did; `mismatched` counts differences left after noise removal."""

    total: int = 0
    replayed: int = 0
    skipped: int = 0
    matched: int = 0
    mismatched: int = 0
    failed: int = 0
    timed_out: int = 0
    seconds: float = 0.0


def resolve_target(against: str, config: FacadeConfig | None) -> str:
    """A URL as given, or the URL of a declared upstream."""
    if "://" in against:
        return against.rstrip("/")
    if config is None:
        raise ReplayError(f"--against {against!r} is not a URL; give a URL (http://host:port) or an upstream name with --config routing.yaml")
    upstream = config.upstreams.get(against)
    if upstream is None:
        raise ReplayError(f"--against {against!r} is not a declared upstream; declared: {', '.join(config.upstreams)}")
    return upstream.url.rstrip("/")


def rules_by_route(config: FacadeConfig | None, *, max_body: int = RECORD_BODY_CAP) -> dict[str, RouteRules]:
    if config is None:
        return {}
    return {r.id: route_rules(r.shadow.compare, r.shadow.redact, max_body=max_body) for r in config.routes if r.shadow is not None}


async def replay_exchanges(
    exchanges: Sequence[RecordedExchange],
    base_url: str,
    *,
    writer: StoreWriter,
    rules: Mapping[str, RouteRules],
    rate: float | None = None,
    timeout: float = 10.0,
    concurrency: int = 4,
    on_done: Callable[[ComparisonRecord | None], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ReplaySummary:
    """Replay `exchanges` against `base_url` at most `rate` per second; store every comparison."""
    summary = ReplaySummary(total=len(exchanges))
    default = route_rules(max_body=RECORD_BODY_CAP)
    models: dict[str, NoiseModel] = {}
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(index: int, ex: RecordedExchange, client: httpx.AsyncClient) -> None:
        if rate:
            # Pacing for the rate limit: request i leaves at start + i/rate.
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        async with gate:
            record: ComparisonRecord | None = None
            if ex.body_truncated:
                summary.skipped += 1
            else:
                record = await _send(ex, client, rules.get(ex.route, default), models.setdefault(ex.route, NoiseModel(rules.get(ex.route, default).thresholds)))
                summary.replayed += 1
                if record.outcome == "timeout":
                    summary.timed_out += 1
                elif record.outcome == "failed":
                    summary.failed += 1
                elif record.match_denoised:
                    summary.matched += 1
                else:
                    summary.mismatched += 1
                writer.submit(record)
            if on_done is not None:
                on_done(record)

    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport, follow_redirects=False) as client:
        async with asyncio.TaskGroup() as group:
            for i, ex in enumerate(exchanges):
                group.create_task(one(i, ex, client))
    summary.seconds = time.monotonic() - started
    return summary


async def _send(ex: RecordedExchange, client: httpx.AsyncClient, rules: RouteRules, model: NoiseModel) -> ComparisonRecord:
    headers = ex.replayable_headers() + [("x-strangler-shadow", "1")]
    request_line = f"{ex.method} {ex.target}"
    t0 = time.perf_counter()
    try:
        response = await client.request(ex.method, ex.target, headers=headers, content=ex.body or None)
    except httpx.TimeoutException as exc:
        return failure_record(route=ex.route, endpoint=ex.endpoint, primary_status=ex.status, primary_ms=ex.duration_ms, outcome="timeout", error=repr(exc), source="replay")
    except httpx.HTTPError as exc:
        return failure_record(route=ex.route, endpoint=ex.endpoint, primary_status=ex.status, primary_ms=ex.duration_ms, outcome="failed", error=repr(exc), source="replay")
    candidate_ms = (time.perf_counter() - t0) * 1000
    primary = Reply(ex.status, {k.lower(): v for k, v in ex.response_headers}, ex.response_body, ex.response_truncated)
    # The recording holds the primary's answer redacted and cut to the recorder's cap; the
    # candidate's answer goes through the same redactor, so redacted fields compare equal and
    # none of the candidate's secrets reach the store.
    redactor = rules.redactor.also_redacting_fields_redacted_in(ex.response_body)
    if redactor is not rules.redactor:
        rules = replace(rules, redactor=redactor)
    candidate_headers = redactor.header_map({k.lower(): v for k, v in response.headers.items()})
    candidate_body, cut = redactor.body(response.content, candidate_headers.get("content-type", ""))
    candidate = Reply(response.status_code, candidate_headers, candidate_body, cut)
    return judge(
        route=ex.route,
        endpoint=ex.endpoint,
        request_line=request_line,
        primary=primary,
        candidate=candidate,
        second=None,
        rules=rules,
        model=model,
        primary_ms=ex.duration_ms,
        candidate_ms=candidate_ms,
        source="replay",
    )


def load_exchanges(traffic: Path, route: str | None = None) -> list[RecordedExchange]:
    return [ex for ex in read_traffic(traffic) if route is None or ex.route == route]


def open_store(store_url: str | None, config: FacadeConfig | None) -> ShadowStore:
    if store_url is None and config is not None:
        s = config.shadow_store
        return ShadowStore(s.url, retention=s.retention, max_rows=s.max_rows)
    return ShadowStore(store_url or "sqlite:///.strangler/shadow.db")


def load_optional_config(path: Path | None) -> FacadeConfig | None:
    return load_config(path) if path is not None else None
