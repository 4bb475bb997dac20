"""Offline replay: send recorded requests to a candidate and compare with the recorded answers.

The recorded primary responses (from `facade.shadow.recorder`) stand in for the primary; results go to
the same shadow store as live shadowing (marked `source = replay`), so `shadow report` shows them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from facade.config import FacadeConfig
from facade.shadow.compare import Reply
from facade.shadow.exceptions import ReplayError
from facade.shadow.jobs import SAFE_METHODS
from facade.shadow.judge import RouteRules, failure_record, judge, route_rules
from facade.shadow.noise import NoiseModel
from facade.shadow.recorder import RECORD_BODY_CAP, RecordedExchange, RecorderError, read_traffic
from facade.shadow.store import ComparisonRecord, ShadowStore
from facade.shadow.writer import StoreWriter

__all__ = [
    "ReplaySummary", "check_options", "count_exchanges", "is_sandbox", "load_exchanges", "replay_exchanges", "resolve_target", "rules_by_route",
    "run_replay",
]


@dataclass
class ReplaySummary:
    """What a replay did; `mismatched` counts differences left after noise removal."""

    total: int = 0
    replayed: int = 0
    skipped: int = 0  # recorded with a truncated request body: cannot be sent as it was
    skipped_writes: int = 0  # a write method, and the target is neither a sandbox nor opted in
    matched: int = 0
    mismatched: int = 0
    failed: int = 0
    timed_out: int = 0
    seconds: float = 0.0


# The most of a candidate's answer replay reads, as the façade's live shadowing does: a larger
# answer is compared as the truncated text it is, never held whole.
CANDIDATE_BODY_CAP = 4 * 1024 * 1024


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


def is_sandbox(against: str, config: FacadeConfig | None) -> bool:
    """Whether `against` names an upstream that `routing.yaml` declares a sandbox (a bare URL is not)."""
    upstream = config.upstreams.get(against) if config is not None and "://" not in against else None
    return upstream is not None and upstream.sandbox


def rules_by_route(config: FacadeConfig | None, *, max_body: int = RECORD_BODY_CAP) -> dict[str, RouteRules]:
    if config is None:
        return {}
    return {r.id: route_rules(r.shadow.compare, r.shadow.redact, max_body=max_body) for r in config.routes if r.shadow is not None}


async def replay_exchanges(
    exchanges: Iterable[RecordedExchange],
    base_url: str,
    *,
    writer: StoreWriter,
    rules: Mapping[str, RouteRules],
    rate: float | None = None,
    timeout: float = 10.0,
    concurrency: int = 4,
    allow_writes: bool = False,
    on_done: Callable[[ComparisonRecord | None], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ReplaySummary:
    """Replay `exchanges` against `base_url` at most `rate` per second; store every comparison.

    `exchanges` is read as it is replayed (a file of any size stays on disk): `concurrency`
    workers take the next exchange each. Write methods are replayed only with `allow_writes`,
    for a candidate that may take them (a sandbox); otherwise they are counted and skipped.
    """
    summary = ReplaySummary()
    default = route_rules(max_body=RECORD_BODY_CAP)
    models: dict[str, NoiseModel] = {}
    source = iter(exchanges)
    started = time.monotonic()

    async def one(ex: RecordedExchange, client: httpx.AsyncClient) -> ComparisonRecord | None:
        if ex.body_truncated:
            summary.skipped += 1
            return None
        if ex.method not in SAFE_METHODS and not allow_writes:
            summary.skipped_writes += 1
            return None
        route_rules_ = rules.get(ex.route, default)
        record = await _send(ex, client, route_rules_, models.setdefault(ex.route, NoiseModel(route_rules_.thresholds)))
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
        return record

    async def worker(client: httpx.AsyncClient) -> None:
        for ex in source:  # shared: each worker takes the next one
            index = summary.total
            summary.total += 1
            if rate:
                # Pacing for the rate limit: request i leaves at start + i/rate.
                await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            record = await one(ex, client)
            if on_done is not None:
                on_done(record)

    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport, follow_redirects=False) as client:
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(max(1, concurrency)):
                    group.create_task(worker(client))
        except* RecorderError as failed:
            raise failed.exceptions[0] from None  # a broken line: its message names it
    summary.seconds = time.monotonic() - started
    return summary


async def _send(ex: RecordedExchange, client: httpx.AsyncClient, rules: RouteRules, model: NoiseModel) -> ComparisonRecord:
    headers = ex.replayable_headers() + [("x-strangler-shadow", "1")]
    request_line = f"{ex.method} {ex.target}"
    t0 = time.perf_counter()
    try:
        async with client.stream(ex.method, ex.target, headers=headers, content=ex.body or None) as response:
            content, truncated = await _read_capped(response, CANDIDATE_BODY_CAP)
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
    candidate_body, cut = redactor.body(content, candidate_headers.get("content-type", ""))
    candidate = Reply(response.status_code, candidate_headers, candidate_body, cut or truncated)
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


async def _read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool]:
    """At most `cap` bytes of the body, and whether there was more (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        if size + len(chunk) > cap:
            chunks.append(chunk[: cap - size])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def load_exchanges(traffic: Path, route: str | None = None) -> Iterator[RecordedExchange]:
    """The exchanges of a traffic file (for one route, if given), read as they are used."""
    return (ex for ex in read_traffic(traffic) if route is None or ex.route == route)


def count_exchanges(traffic: Path, route: str | None = None) -> int | None:
    """How many exchanges a traffic file holds (for one route, if given), for a progress bar; None
    when the file cannot be read through, which the replay itself then reports."""
    try:
        if route is None:
            with traffic.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        return sum(1 for _ in load_exchanges(traffic, route))
    except (OSError, RecorderError):
        return None


def check_options(*, rate: float | None, concurrency: int, timeout: float) -> None:
    """Refuse replay options that cannot mean anything, before anything is read or sent."""
    if rate is not None and not rate > 0:
        raise ReplayError(f"--rate {rate:g} is not a positive number of requests per second; give e.g. --rate 50, or leave it out to go as fast as --concurrency allows")
    if concurrency < 1:
        raise ReplayError(f"--concurrency {concurrency} must be at least 1; give e.g. --concurrency 4")
    if not timeout > 0:
        raise ReplayError(f"--timeout {timeout:g} must be a positive number of seconds; give e.g. --timeout 10")


def run_replay(
    traffic: Path,
    against: str,
    *,
    config: FacadeConfig | None = None,
    store: ShadowStore,
    rate: float | None = None,
    timeout: float = 10.0,
    concurrency: int = 4,
    route: str | None = None,
    allow_writes: bool = False,
    on_done: Callable[[ComparisonRecord | None], None] | None = None,
) -> ReplaySummary:
    """Replay a traffic file against a candidate and store the comparisons. Write methods go only
    to an upstream `routing.yaml` declares a sandbox, or with `allow_writes`."""
    check_options(rate=rate, concurrency=concurrency, timeout=timeout)
    base_url = resolve_target(against, config)
    exchanges = load_exchanges(traffic, route)
    rules = rules_by_route(config)
    writes = allow_writes or is_sandbox(against, config)

    async def go() -> ReplaySummary:
        writer = StoreWriter(store)
        await writer.start()
        try:
            return await replay_exchanges(
                exchanges, base_url, writer=writer, rules=rules, rate=rate, timeout=timeout, concurrency=concurrency, allow_writes=writes, on_done=on_done
            )
        finally:
            await writer.stop()

    return asyncio.run(go())
