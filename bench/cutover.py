"""Write-switch benchmark: a naive route flip against the gated write cutover, under live writes.

One run, everything on 127.0.0.1, bounded in time. Each phase starts the sample stack of
`strangler demo` (cutover/sample_stack.py: a fresh pair of databases on one private PostgreSQL,
the seeded monolith, the catalog service, the façade, the forward CDC stream and, with
extracted/catalog/reverse.yaml, the reverse one, in both phases alike) and puts the write
load of cutover/writeload.py on the façade (creates and updates of products through the route
catalog-write, reads, monolith orders that take stock), then switches:

1. **naive** (the baseline): `catalog-write` flipped to the catalog service by editing the
   routing file (`facade.edit.shift_weights`) and reloading, no hold, no fence; then back;
2. **gated**: `switch_writes` forward (hold at the façade, fence,
   reverse stream), back (rollback), forward again.

Each phase gets its own databases, so the naive flip's damage does not leak into the gated one.
The measuring is cutover/switches.py's `run_switches` (what `make demo` prints for its write
cutover): per switch, acknowledged writes lost and creates doubled in either store, client
errors, the pauses (clients', façade's hold, the switch's own against its estimate) and the
added write latency p50/p99/max. `--quick` is the small run the test uses; `--json` prints
everything, the tables go to stderr.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from bench._harness import BenchError, Ratio, cpu_speed, load_average, ratios_table, signals_as_interrupt  # noqa: E402
from common.postgres import EmbeddedPostgres  # noqa: E402
from common.processes import ProcessError  # noqa: E402
from cutover.sample_stack import REVERSE_SPEC_PATH, SPEC_PATH, Stack, sample_stack, write_plan  # noqa: E402
from cutover.switches import Switch, SwitchFailed, SwitchTiming, gated, naive, run_switches, switches_table  # noqa: E402
from cutover.writeload import LoadSettings  # noqa: E402


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How big a run is."""

    products: int
    steady: float
    """Seconds of load before the first switch (the latency reference)."""
    soak: float
    """Seconds of load after each switch."""
    load: LoadSettings


FULL = Sizes(products=5000, steady=8.0, soak=6.0, load=LoadSettings(rate=200, read_rate=50, order_rate=10, pool=200))
QUICK = Sizes(products=400, steady=3.0, soak=2.5, load=LoadSettings(rate=60, read_rate=10, order_rate=5, pool=40))

def run_phase(
    name: str, switches: list[tuple[str, Switch]], *, server_url: str, sizes: Sizes, work_dir: Path, console: Console,
) -> dict[str, Any]:
    """A fresh stack (its own databases), the load, the switches, the checker."""
    with sample_stack(database_url=server_url, products=sizes.products, work_dir=work_dir / name, console=console,
                      db_prefix=f"bench_{name}") as env:
        return run_switches(env, name, switches(env), load=sizes.load,
                            timing=SwitchTiming(steady=sizes.steady, soak=sizes.soak), console=console)


def naive_switches(env: Stack) -> list[tuple[str, Switch]]:
    return [("naive flip to catalog", naive("catalog")), ("naive flip back", naive("monolith"))]


def gated_switches(env: Stack, count: int = 3) -> list[tuple[str, Switch]]:
    """`strangler cutover writes`, its rollback, and the switch again (`count` switches in all,
    alternating), on a plan of the stack."""
    plan = write_plan(
        env.work_dir / "cutover.yaml", routing=env.routing_path, spec=SPEC_PATH, facade_url=env.facade_url,
        journal_url=env.catalog_db, events=env.work_dir / "cutover-events.jsonl", min_requests=100,
        reverse_spec=env.reverse_spec,
    )
    labels = ["write cutover", "write rollback", *(("write cutover again", "write rollback again")[i % 2] for i in range(count - 2))]
    return [(label, gated("back" if "rollback" in label else "forward", plan)) for label in labels[:count]]


def targets(switches: list[dict[str, Any]]) -> list[Ratio]:
    """The targets of DESIGN.md, over the gated switches (the naive one is the baseline)."""
    gated = [s for s in switches if s["phase"] == "gated"]
    if not gated:
        return []
    estimates = [abs(s["estimate_error"]) for s in gated if s["estimate_error"] is not None]
    return [
        Ratio("acknowledged writes lost, gated switches", sum(s["lost"] for s in gated), "", 0, "at_most"),
        Ratio("creates doubled, gated switches", sum(s["doubled"] for s in gated), "", 0, "at_most"),
        Ratio("client errors, gated switches", sum(s["client_errors"] for s in gated), "", 0, "at_most"),
        Ratio("max added write latency, worst switch", max(s["added_ms"]["max"] for s in gated), "ms", 1000, "at_most"),
        Ratio("pause estimate error, worst switch", max(estimates) if estimates else None, "%", 0.5, "at_most"),
        Ratio("switches with the estimate within ±50%", sum(e <= 0.5 for e in estimates) / len(estimates) if estimates else None,
              "%", 1.0, "at_least"),
    ]


def main(
    quick: bool = typer.Option(False, "--quick", help="A small run (lower rate, short soaks): a smoke check, not the targets' sizes."),
    rate: float = typer.Option(None, help="Product writes per second (default 200; 60 with --quick)."),
    naive_baseline: bool = typer.Option(True, "--naive/--no-naive", help="Run the naive flip as the baseline first."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout (tables go to stderr)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temp directory (logs of every process) and print its path."),
    count: int = typer.Option(3, "--switches", min=1, max=40,
                              help="Gated switches, alternating cutover and rollback (more give the estimate's spread)."),
) -> None:
    """Switch catalog writes under live write traffic, naively and with the gated write cutover,
    and print what each switch lost, doubled, failed and paused."""
    signals_as_interrupt()
    console = Console(stderr=json_output)
    if not console.is_terminal:
        console = Console(stderr=json_output, width=160)
    sizes = QUICK if quick else FULL
    if rate is not None:
        sizes = Sizes(products=sizes.products, steady=sizes.steady, soak=sizes.soak,
                      load=LoadSettings(**{**sizes.load.__dict__, "rate": rate, "run_id": sizes.load.run_id}))
    tmp = Path(tempfile.mkdtemp(prefix="strangler-bench-cutover-"))
    load_before, speed_before = load_average(), cpu_speed()
    phases: list[dict[str, Any]] = []
    notes: list[str] = []
    pg = EmbeddedPostgres(tmp / "pg", ephemeral=True)
    try:
        with console.status("starting PostgreSQL"):
            pg.start()
        plan: list[tuple[str, Callable[[Stack], list[tuple[str, Switch]]]]] = []
        if naive_baseline:
            plan.append(("naive", naive_switches))
        if not REVERSE_SPEC_PATH.exists():
            notes.append(f"{REVERSE_SPEC_PATH} is missing: the gated write cutover needs the reverse stream")
        else:
            plan.append(("gated", lambda env: gated_switches(env, count)))
        for name, switches in plan:
            phase = run_phase(name, switches, server_url=pg.url(), sizes=sizes, work_dir=tmp, console=console)
            # Every run loads with markers of its own.
            sizes = Sizes(products=sizes.products, steady=sizes.steady, soak=sizes.soak,
                          load=LoadSettings(**{**sizes.load.__dict__, "run_id": LoadSettings().run_id}))
            phases.append(phase)
    except (BenchError, ProcessError, SwitchFailed, RuntimeError) as exc:
        console.print(f"[red]FAILED:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; everything the bench started has been stopped.[/yellow]")
        raise typer.Exit(130) from None
    finally:
        pg.stop()
        if keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    switches = [s for phase in phases for s in phase["switches"]]
    ratios = targets(switches)
    results = {
        "machine": {"cpus": os.cpu_count(), "load_average": load_before, "load_average_after": load_average(),
                    "cpu_loop_s": speed_before, "cpu_loop_s_after": cpu_speed(),
                    "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"quick": quick, "products": sizes.products, "steady_s": sizes.steady, "soak_s": sizes.soak,
                     "rate": sizes.load.rate, "read_rate": sizes.load.read_rate, "order_rate": sizes.load.order_rate,
                     "pool": sizes.load.pool},
        "phases": phases, "switches": switches, "ratios": [r.as_dict() for r in ratios], "notes": notes,
    }
    console.print(switches_table(switches))
    machine = results["machine"]
    console.print(f"machine: {machine['cpus']} cores; a fixed Python loop took {machine['cpu_loop_s']:.3f} s before the run and "
                  f"{machine['cpu_loop_s_after']:.3f} s after it (a slower host shows here); load average {load_before[0]:.2f} before")
    for phase in phases:
        stores = ", ".join(f"{store} {v['rows']} rows, {v['lost']} lost, {v['doubled']} doubled" for store, v in phase["stores"].items())
        console.print(f"{phase['phase']}: {phase['requests']} requests, {phase['writes_per_s']:.0f} writes/s; {stores}")
        for store, v in phase["stores"].items():
            for line in v["samples"]:
                console.print(f"    {store}: {line}", markup=False, highlight=False)
    if ratios:
        console.print(ratios_table("Targets (DESIGN.md), gated switches", ratios))
    for note in notes:
        console.print(f"note: {note}")
    if json_output:
        typer.echo(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    typer.run(main)
