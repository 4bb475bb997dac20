"""`strangler shadow report|replay`: comparison reports and offline replay of recorded traffic.

Thin: each command parses its options, calls `facade.shadow`, prints. `report` only reads: it
opens the store read-only and never creates a directory, a file or a table.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from facade.config import FacadeConfig, load_config
from facade.shadow import ShadowStore, check, make_report, parse_rate, render, run_replay, write_report
from facade.shadow.replay import check_options, count_exchanges

__all__ = ["app", "write_report"]

app = typer.Typer(no_args_is_help=True, help="Shadow traffic: comparison reports and offline replay.")

STORE_HELP = (
    "Shadow store SQLAlchemy URL; default the shadow_store of --config (a relative path taken from that file's directory, "
    "as the façade takes it), else sqlite:///.strangler/shadow.db."
)


def _open_store(store: str | None, config: Path | None, *, read_only: bool) -> tuple[ShadowStore, FacadeConfig | None]:
    cfg = load_config(config) if config is not None else None
    base = config.resolve().parent if config is not None else None
    return ShadowStore.open(store, cfg.shadow_store if cfg is not None else None, base=base, read_only=read_only), cfg


@app.command("report")
def report(
    store: str = typer.Option(None, "--store", help=STORE_HELP),
    config: Path = typer.Option(None, "--config", help="routing.yaml, for the store URL and per-route noise thresholds."),
    since: str = typer.Option(None, "--since", help="Only comparisons newer than this: 1h, 30m, 2d or an ISO 8601 time."),
    route: str = typer.Option(None, "--route", help="Only this route id."),
    fmt: str = typer.Option("md", "--format", help="Output format: html, md or json."),
    output: Path = typer.Option(None, "-o", "--output", help="Write to this file instead of standard output."),
    fail_over: str = typer.Option(None, "--fail-over", help="Exit 1 when the mismatch rate (noise removed) or the candidate error rate is above this rate, e.g. 0.05 or 5%, or when nothing was compared."),
) -> None:
    """Per route and endpoint: match rates with and without noise, status matrix, top differing fields, latency, drops."""
    limit = parse_rate(fail_over) if fail_over is not None else None
    shadow_store, cfg = _open_store(store, config, read_only=True)
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
    check(result, limit)


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
    store: str = typer.Option(None, "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Replay recorded requests against a candidate, compare with the recorded primary answers, fill the shadow store."""
    check_options(rate=rate, concurrency=concurrency, timeout=timeout)
    shadow_store, cfg = _open_store(store, config, read_only=False)
    total = count_exchanges(traffic, route) if not as_json else None
    try:
        with Progress(
            TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=Console(stderr=True), disable=as_json
        ) as progress:
            task = progress.add_task("replay", total=total)
            summary = run_replay(
                traffic, against, config=cfg, store=shadow_store, rate=rate, timeout=timeout, concurrency=concurrency, route=route,
                allow_writes=allow_writes, on_done=lambda _: progress.advance(task),
            )
    finally:
        shadow_store.close()
    if as_json:
        typer.echo(json.dumps(asdict(summary)))
    else:
        typer.echo(
            f"replayed {summary.replayed} of {summary.total} in {summary.seconds:.1f}s: {summary.matched} matched, "
            f"{summary.mismatched} differ, {summary.failed} failed, {summary.timed_out} timed out, {summary.skipped} skipped (truncated body), "
            f"{summary.skipped_writes} writes skipped{' (not a sandbox: pass --allow-writes to send them)' if summary.skipped_writes else ''}"
        )
