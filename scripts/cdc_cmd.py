"""`strangler cdc run|status|apply|drop` and `strangler verify`: thin wrappers over `cdc/`.

Every command takes the sync spec (`--spec extracted/catalog/sync.yaml`); the databases come
from `--source-url/--target-url`, else the spec (which may name environment variables).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cdc.exceptions import CDCError
from cdc.spec import SyncSpec, load_spec

__all__ = ["app", "verify"]

app = typer.Typer(no_args_is_help=True, help="Change data capture: snapshot + stream legacy tables into a service's store.")

SPEC_OPTION = typer.Option(..., "--spec", help="Sync spec YAML, e.g. extracted/catalog/sync.yaml.")
# No envvar= fallbacks: which variable names which side is the spec's to say (sync.yaml reads the
# monolith's URL as its source, reverse.yaml as its target).
SOURCE_OPTION = typer.Option(None, "--source-url", help="Source database URL (legacy; the service's store in a reverse "
                             "spec); overrides the spec's source.url.")
TARGET_OPTION = typer.Option(None, "--target-url", help="Target database URL (the service's store; legacy in a reverse "
                             "spec); overrides the spec's target.url.")


def _spec(path: Path, source_url: str | None, target_url: str | None) -> SyncSpec:
    return load_spec(path).with_urls(source_url=source_url, target_url=target_url)


# -- cdc apply --from-file --------------------------------------------------------------------------


@app.command("apply")
def apply_command(
    spec_path: Path = SPEC_OPTION,
    from_file: Path = typer.Option(..., "--from-file", help="Debezium-format events (JSON, one per line) to apply."),
    target_url: str = TARGET_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Apply Debezium-format change events from a file into the service's store."""
    from cdc.eventfile import apply_file

    totals = apply_file(_spec(spec_path, None, target_url), from_file)
    if json_output:
        typer.echo(json.dumps(totals))
    else:
        typer.echo(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in totals.items()))


# -- cdc run ----------------------------------------------------------------------------------------


@app.command("run")
def run_command(
    spec_path: Path = SPEC_OPTION,
    source_url: str = SOURCE_OPTION,
    target_url: str = TARGET_OPTION,
    transport: str = typer.Option("memory", "--transport", help="memory (embedded, default) or kafka."),
    bootstrap_servers: str = typer.Option(
        None, "--bootstrap-servers", envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka brokers (with --transport kafka)."
    ),
    group_id: str = typer.Option(None, "--group-id", help="Kafka consumer group of the appliers (default strangler-<name>)."),
    capture: bool = typer.Option(
        True, "--capture/--no-capture",
        help="With kafka: also run our capture into Kafka (off when Debezium Connect writes the topics).",
    ),
    until_caught_up: bool = typer.Option(
        False, "--until-caught-up", "--once", help="Stop once the target has caught up with the source (snapshot + backlog)."
    ),
    idle_timeout: float = typer.Option(2.0, "--idle-timeout", help="With --until-caught-up: seconds without changes that count as caught up."),
    heartbeat_interval: float = typer.Option(
        5.0, "--heartbeat-interval", min=0.1, help="Seconds between heartbeats, which keep an idle sync's lag (and slot) moving."
    ),
    kafka_option: list[str] = typer.Option(
        [], "--kafka-option", help="A librdkafka setting KEY=VALUE for the Kafka clients (repeatable), e.g. session.timeout.ms=6000."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Try the snapshot on a sample in a scratch schema; leave nothing behind."),
    sample: int = typer.Option(1000, "--sample", help="With --dry-run: rows per table (first in key order)."),
    all_rows: bool = typer.Option(False, "--all", help="With --dry-run: every row, not a sample."),
    no_write: bool = typer.Option(False, "--no-write", help="With --dry-run: map in memory only, write nothing to the target."),
    chunk_rows: int = typer.Option(1000, "--chunk-rows", help="With --dry-run: rows read and written at a time."),
    json_output: bool = typer.Option(False, "--json", help="With --dry-run: print the report as JSON."),
) -> None:
    """Snapshot the legacy tables if needed, then stream changes into the service's store."""
    from cdc.pipeline import run

    spec = _spec(spec_path, source_url, target_url)
    if not dry_run and (all_rows or no_write or json_output):
        raise CDCError("--all, --no-write and --json are options of the dry-run; add --dry-run")
    if dry_run:
        _dry_run(spec, sample=None if all_rows else sample, write=not no_write, chunk_rows=chunk_rows, json_output=json_output)
        return
    kafka_config: dict[str, str] = {}
    for item in kafka_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CDCError(f"--kafka-option {item!r} is not KEY=VALUE; e.g. --kafka-option session.timeout.ms=6000")
        kafka_config[key.strip()] = value.strip()
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = progress.add_task(f"snapshot {table}", total=max(total, done, 1))
            progress.update(tasks[table], completed=done, total=max(total, done, 1))

        stats = run(
            spec, transport=transport, bootstrap_servers=bootstrap_servers, group_id=group_id, capture=capture,
            until_caught_up=until_caught_up, idle_timeout=idle_timeout, on_progress=on_progress,
            kafka_config=kafka_config, heartbeat_interval=heartbeat_interval,
        )
    console.print(f"stopped: {stats.applied} changes applied, {stats.dead_lettered} dead-lettered, position {stats.position}")


def _dry_run(spec: SyncSpec, *, sample: int | None, write: bool, chunk_rows: int, json_output: bool) -> None:
    from cdc.dryrun import dry_run
    from cdc.preflight import size_text

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = progress.add_task(f"dry-run {table}", total=max(total, 1))
            progress.update(tasks[table], completed=done, total=max(total, done, 1))

        result = dry_run(spec, sample=sample, write=write, chunk_rows=chunk_rows, progress=on_progress,
                         on_stage=lambda message: console.print(escape(message), highlight=False))
    if json_output:
        typer.echo(json.dumps(result.to_dict(), default=str))
    else:
        out = Console(soft_wrap=True)
        table = Table(title=f"dry-run {result.spec} ({'all rows' if sample is None else f'sample {sample}'}"
                            f"{', in memory' if not write else ''})")
        for col in ("table", "read", "filtered", "mapped", "rejected", "rows/s", "rows (est.)", "full copy", "verify"):
            table.add_column(col)
        for t in result.tables:
            verdict = "-" if t.verify is None else ("ok" if t.verify["ok"] else "DIFFERS")
            full = f"{t.projected_seconds:.1f} s" if t.projected_seconds is not None else "-"
            table.add_row(f"{t.source} → {t.target}", str(t.read), str(t.filtered), str(t.mapped), str(t.rejected),
                          f"{t.rate:.0f}", str(t.estimated_rows), full, verdict)
        out.print(table)
        for t in result.tables:
            for example in t.examples:
                out.print(f"  rejected {t.source} key={escape(str(example['key']))}: {escape(example['reason'])}", highlight=False)
        if result.projected_seconds is not None:
            out.print(f"full snapshot: about {result.projected_seconds:.1f} s; the slot would retain about "
                      f"{size_text(result.projected_wal_bytes or 0)} of WAL (source WAL rate "
                      f"{size_text(result.wal_bytes_per_second)}/s)", highlight=False)
    if result.interrupted:
        raise CDCError("dry-run interrupted; nothing was left behind")
    if not result.verified:
        raise CDCError("dry-run: the scratch copy differs from the mapped source sample (see verify above)")


# -- cdc check --------------------------------------------------------------------------------------

_MARKS = {"ok": "[green]✓[/green]", "fail": "[red]✗[/red]", "warn": "[yellow]![/yellow]"}


@app.command("check")
def check_command(
    spec_path: Path = SPEC_OPTION,
    source_url: str = SOURCE_OPTION,
    target_url: str = TARGET_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Print the checks as JSON."),
    wal_sample: float = typer.Option(1.0, "--wal-sample", help="Seconds between the two WAL position readings."),
) -> None:
    """Check everything `cdc run` needs, changing nothing; exit 1 when a check fails."""
    from cdc.preflight import preflight

    result = preflight(_spec(spec_path, source_url, target_url), wal_sample_seconds=wal_sample)
    if json_output:
        typer.echo(json.dumps(result.to_dict()))
    else:
        out = Console(highlight=False, soft_wrap=True)
        for c in result.checks:
            out.print(f"{_MARKS[c.status]} {c.name}: {escape(c.message)}")
            if c.fix and c.status != "ok":
                out.print(f"    fix: {escape(c.fix)}")
        ok = sum(c.status == "ok" for c in result.checks)
        out.print(f"{ok} passed, {len(result.failures)} failed, {len(result.warnings)} warnings")
    if not result.ok:
        raise typer.Exit(1)


# -- cdc status -------------------------------------------------------------------------------------


@app.command("status")
def status_command(
    spec_path: Path = SPEC_OPTION,
    source_url: str = SOURCE_OPTION,
    target_url: str = TARGET_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    retained_warning_mb: int = typer.Option(1024, "--retained-warning-mb", help="Warn when the slot retains more WAL than this."),
) -> None:
    """Applied position, lag in seconds and bytes, slot retained WAL, dead letters and ownership conflicts."""
    from cdc.status import status

    st = status(_spec(spec_path, source_url, target_url), retained_warning=retained_warning_mb << 20)
    if json_output:
        typer.echo(json.dumps(st.to_dict(), default=str))
        return
    console = Console()
    table = Table(title=f"sync {st.spec}", show_header=False)
    for label, value in [
        ("applied position", f"{st.applied_lsn} {list(st.applied_position)}"),
        ("source WAL position", st.source_lsn or "-"),
        ("lag", f"{st.lag_bytes if st.lag_bytes is not None else '-'} bytes, "
                f"{f'{st.lag_seconds:.1f}' if st.lag_seconds is not None else '-'} s"),
        ("slot", f"{st.slot} ({'active' if st.slot_active else 'inactive'})" if st.slot_exists else f"{st.slot} (missing)"),
        ("slot retained WAL", f"{st.slot_retained_bytes} bytes" if st.slot_retained_bytes is not None else "-"),
        ("snapshot", "done" if st.snapshot.get("done") else ("in progress" if st.snapshot else "not started")),
        ("dead letters", str(st.dead_letters)),
        ("conflicts", f"{st.conflicts} (ownership {st.ownership})"),
    ]:
        table.add_row(label, value)
    console.print(table)
    for warning in st.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


# -- cdc drop ---------------------------------------------------------------------------------------


@app.command("drop")
def drop_command(
    spec_path: Path = SPEC_OPTION,
    source_url: str = SOURCE_OPTION,
    target_url: str = TARGET_OPTION,
    reset: bool = typer.Option(False, "--reset", help="Also forget the target's checkpoint: the next run re-copies everything."),
    json_output: bool = typer.Option(False, "--json", help="Print what was dropped as JSON."),
) -> None:
    """Remove the replication slot and the publication (stops WAL retention for this sync)."""
    from cdc.teardown import drop

    result = drop(_spec(spec_path, source_url, target_url), reset=reset)
    if json_output:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"slot {'dropped' if result['slot_dropped'] else 'absent'}, "
                   f"publication {'dropped' if result['publication_dropped'] else 'absent'}")


# -- verify -----------------------------------------------------------------------------------------


def verify(
    spec_path: Path = SPEC_OPTION,
    source_url: str = SOURCE_OPTION,
    target_url: str = TARGET_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Print the diff as JSON."),
    wait: float = typer.Option(30.0, "--wait", help="Seconds to let the applier catch up before reporting differences."),
    samples: int = typer.Option(5, "--samples", help="Sample rows shown per table."),
) -> None:
    """Row-by-row diff of legacy and service tables through the mapping; exit 0 only when identical."""
    from cdc.verify import verify as run_verify

    console = Console(stderr=True)
    result = run_verify(_spec(spec_path, source_url, target_url), wait=wait, samples=samples,
                        on_wait=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    if json_output:
        typer.echo(json.dumps(result.to_dict(), default=str))
    else:
        out = Console()
        table = Table(title=f"verify {result.spec}")
        for col in ("source", "target", "matching", "mismatched", "only in source", "only in target"):
            table.add_column(col)
        for t in result.tables:
            table.add_row(t.source, t.target, str(t.matching), str(t.mismatched), str(t.only_in_source), str(t.only_in_target))
        out.print(table)
        for t in result.tables:
            for sample in t.samples:
                out.print(f"  {t.target} {sample['kind']} key={sample['key']}: "
                          f"{json.dumps(sample.get('columns') or sample.get('row'), default=str)[:300]}")
                if "conflict" in sample:
                    out.print(f"    [red]{escape(sample['conflict']['describe'])}[/red] (strangler.conflict)")
        if not result.aligned:
            out.print(f"[yellow]positions not aligned:[/yellow] source at {result.source_lsn}, applied {result.applied_position}")
        out.print("[green]identical[/green]" if result.identical else "[red]differences found[/red]")
    if not result.identical:
        raise typer.Exit(1)

