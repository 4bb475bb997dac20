"""`strangler rehearse PLAN --traffic FILE [--speed N]`: the whole plan on a scratch stack, one report.

Thin over `cutover.rehearsal.rehearse`: load the plan, run the rehearsal with progress on stderr,
render the report (`--format html|md|json`) to `--out` or stdout. Ctrl-C and SIGTERM stop and
remove everything the rehearsal started. Exit codes as `cutover run`: 0 the plan finished,
1 rolled back or aborted, 3 paused (an inconclusive gate, a replica that did not reload).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from cutover.rehearsal import RehearsalOptions, rehearse as run_rehearsal
from cutover.rehearsal_report import FORMATS, render
from facade.edit import write_atomically
from scripts.cutover_cmd import _EXIT, _load

__all__ = ["rehearse"]

_SUFFIXES = {".html": "html", ".htm": "html", ".md": "md", ".json": "json"}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def rehearse(
    plan_file: Path = typer.Argument(..., metavar="PLAN", help="The plan file, e.g. extracted/catalog/cutover.yaml."),
    traffic: Path = typer.Option(..., "--traffic", help="Recorded traffic (the façade's traffic_record file) to replay."),
    speed: float = typer.Option(60.0, "--speed", help="How many times faster than the plan: soaks last 1/N of their time."),
    source_url: str = typer.Option(None, "--source-url", help="The legacy database to copy (only read); default: the plan's sync spec source."),
    sample: int = typer.Option(None, "--sample", min=1, help="Rows per legacy table to copy (first in key order); default the plan's rehearsal.sample."),
    all_rows: bool = typer.Option(False, "--all", help="Copy every row of the legacy database, not a sample."),
    max_rate: float = typer.Option(None, "--max-rate", min=0.1, help="Most requests per second the replay sends; default the plan's rehearsal.max_rate."),
    fmt: str = typer.Option("html", "--format", help="Report format: html (self-contained), md or json."),
    out: list[Path] = typer.Option([], "--out", help="Write the report here (default: stdout); repeat for more files, "
                                   "each in the format its suffix names (.html, .md, .json), else --format."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
    work_dir: Path = typer.Option(None, "--work-dir", help="Where the temporary directory is made (default: the system's)."),
) -> None:
    """Rehearse a cutover plan on a scratch copy: copied legacy rows, the applications, CDC, a scratch
    façade replaying recorded reads, the plan's steps with soaks shortened by --speed; one report.

    Nothing real is touched: the legacy database is only read, the routing file is copied; everything
    the rehearsal started is stopped and removed at the end (also on Ctrl-C)."""
    fmt = "json" if as_json else fmt
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r} is not a report format; use one of: {', '.join(FORMATS)}", param_hint="--format")
    if sample is not None and all_rows:
        raise typer.BadParameter("--sample N and --all both say how many rows to copy; give one", param_hint="--sample")
    plan = _load(plan_file)
    console = Console(stderr=True)
    started = time.monotonic()

    def progress(text: str) -> None:
        console.print(Text.assemble((f"{time.monotonic() - started:6.1f}s ", "dim"), text), highlight=False)

    options = RehearsalOptions(traffic=traffic, speed=speed, source_url=source_url, sample=sample, all_rows=all_rows,
                               max_rate=max_rate, work_dir=work_dir, plan_file=plan_file)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        doc = run_rehearsal(plan, options, on_progress=progress)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; everything the rehearsal started has been stopped and removed.[/yellow]")
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not out:
        typer.echo(render(doc, fmt), nl=False)
    rendered = [(path, render(doc, _SUFFIXES.get(path.suffix.lower(), fmt))) for path in out]
    for path, text in rendered:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text)
    run = doc["run"]
    reached = sum(1 for step in doc["steps"] if step["reached"])
    console.print(f"rehearsal of {plan.name}: {run['status']}" + (f" ({run['reason']})" if run.get("reason") else "")
                  + f"; {reached} of {len(doc['steps'])} steps reached in {doc['duration_s']:.1f}s"
                  + (f"; report {', '.join(map(str, out))}" if out else ""), highlight=False, markup=False)
    if not doc["writes"].get("rehearsed"):
        console.print(f"writes: not rehearsed ({doc['writes'].get('reason')})", highlight=False, markup=False)
    raise typer.Exit(_EXIT.get(run["status"], 1))
