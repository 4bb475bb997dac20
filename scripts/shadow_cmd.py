"""`strangler shadow report|replay`: comparison reports and offline replay of recorded traffic."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from facade.config import FacadeConfig
from facade.exceptions import FacadeError
from facade.shadow.noise import NoiseThresholds
from facade.shadow.store import ComparisonRecord, ShadowStore, StoreWriter
from facade.shadow.replay import (
    ReplaySummary,
    count_exchanges,
    is_sandbox,
    load_exchanges,
    load_optional_config,
    open_store,
    replay_exchanges,
    resolve_target,
    rules_by_route,
)
from facade.shadow.report import Report, build_report, gate, parse_rate, parse_since, render

app = typer.Typer(no_args_is_help=True, help="Shadow traffic: comparison reports and offline replay.")


class ShadowFailed(FacadeError):
    """The candidate fails the `--fail-over` gate: too many mismatches or unanswered shadows, or none compared."""


def make_report(
    store: ShadowStore, *, since: str | None = None, route: str | None = None, config: FacadeConfig | None = None, now: float | None = None
) -> Report:
    """Read the store and aggregate it (a plain function; the command only renders it)."""
    now = time.time() if now is None else now
    since_ts = parse_since(since, now=now)
    thresholds = {}
    if config is not None:
        for r in config.routes:
            if r.shadow is not None:
                thresholds[r.id] = NoiseThresholds(r.shadow.compare.relative_threshold, r.shadow.compare.absolute_threshold)
    data = store.load(since=since_ts, route=route)
    return build_report(data, now=now, since=since_ts, route_filter=route, thresholds=thresholds)


def write_report(store_url: str, output: Path, *, fmt: str = "html", since: str | None = None, route: str | None = None) -> Report:
    """Render the report of a store into `output` (for the demo and other callers); returns it."""
    store = ShadowStore(store_url)
    try:
        result = make_report(store, since=since, route=route)
    finally:
        store.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(result, fmt), encoding="utf-8")
    return result


@app.command("report")
def report(
    store: str = typer.Option(None, "--store", help="Shadow store SQLAlchemy URL; default from --config, else sqlite:///.strangler/shadow.db."),
    config: Path = typer.Option(None, "--config", help="routing.yaml, for the store URL and per-route noise thresholds."),
    since: str = typer.Option(None, "--since", help="Only comparisons newer than this: 1h, 30m, 2d or an ISO 8601 time."),
    route: str = typer.Option(None, "--route", help="Only this route id."),
    fmt: str = typer.Option("md", "--format", help="Output format: html, md or json."),
    output: Path = typer.Option(None, "-o", "--output", help="Write to this file instead of standard output."),
    fail_over: str = typer.Option(None, "--fail-over", help="Exit 1 when the mismatch rate (noise removed) or the candidate error rate is above this rate, e.g. 0.05 or 5%, or when nothing was compared."),
) -> None:
    """Per route and endpoint: match rates with and without noise, status matrix, top differing fields, latency, drops."""
    limit = parse_rate(fail_over) if fail_over is not None else None
    cfg = load_optional_config(config)
    shadow_store = open_store(store, cfg)
    try:
        result = make_report(shadow_store, since=since, route=route, config=cfg)
    finally:
        shadow_store.close()
    text = render(result, fmt)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output} ({result.compared} compared, mismatch rate {100 * result.mismatch_rate:.1f}% with noise removed)", err=True)
    else:
        typer.echo(text, nl=False)
    reasons = gate(result, limit) if limit is not None else []
    if reasons:
        raise ShadowFailed("; ".join(reasons))


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
    show_progress: bool = False,
) -> ReplaySummary:
    """Replay a traffic file against a candidate and store the comparisons. Write methods go only
    to an upstream `routing.yaml` declares a sandbox, or with `allow_writes`."""
    base_url = resolve_target(against, config)
    exchanges = load_exchanges(traffic, route)
    total = count_exchanges(traffic, route) if show_progress else None
    rules = rules_by_route(config)
    writes = allow_writes or is_sandbox(against, config)

    async def go() -> ReplaySummary:
        writer = StoreWriter(store)
        await writer.start()
        try:
            with Progress(
                TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=Console(stderr=True), disable=not show_progress
            ) as progress:
                task = progress.add_task("replay", total=total)

                def done(_: ComparisonRecord | None) -> None:
                    progress.advance(task)

                return await replay_exchanges(
                    exchanges, base_url, writer=writer, rules=rules, rate=rate, timeout=timeout, concurrency=concurrency, allow_writes=writes, on_done=done
                )
        finally:
            await writer.stop()

    return asyncio.run(go())


@app.command("replay")
def replay(
    traffic: Path = typer.Option(..., "--traffic", help="A JSONL file recorded by the façade (shadow.record in routing.yaml)."),
    against: str = typer.Option(..., "--against", help="Candidate: a URL, or an upstream name declared in --config."),
    config: Path = typer.Option(None, "--config", help="routing.yaml: upstream names, per-route comparison rules, store URL."),
    rate: float = typer.Option(None, "--rate", help="At most this many requests per second (default: as fast as --concurrency allows)."),
    concurrency: int = typer.Option(4, "--concurrency", help="Requests in flight at once."),
    timeout: float = typer.Option(10.0, "--timeout", help="Seconds to wait for each candidate answer."),
    route: str = typer.Option(None, "--route", help="Only replay requests recorded for this route id."),
    allow_writes: bool = typer.Option(
        False, "--allow-writes", help="Also replay POST, PUT, PATCH and DELETE (default: only to an upstream routing.yaml marks `sandbox: true`)."
    ),
    store: str = typer.Option(None, "--store", help="Shadow store SQLAlchemy URL; default from --config, else sqlite:///.strangler/shadow.db."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Replay recorded requests against a candidate, compare with the recorded primary answers, fill the shadow store."""
    cfg = load_optional_config(config)
    shadow_store = open_store(store, cfg)
    summary = run_replay(
        traffic, against, config=cfg, store=shadow_store, rate=rate, timeout=timeout, concurrency=concurrency, route=route,
        allow_writes=allow_writes, show_progress=not as_json,
    )
    if as_json:
        typer.echo(json.dumps(asdict(summary)))
    else:
        typer.echo(
            f"replayed {summary.replayed} of {summary.total} in {summary.seconds:.1f}s: {summary.matched} matched, "
            f"{summary.mismatched} differ, {summary.failed} failed, {summary.timed_out} timed out, {summary.skipped} skipped (truncated body), "
            f"{summary.skipped_writes} writes skipped{' (not a sandbox: pass --allow-writes to send them)' if summary.skipped_writes else ''}"
        )
