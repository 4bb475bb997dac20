"""Write-switch benchmark: a naive route flip against the gated write cutover, under live writes.

One run, everything on 127.0.0.1, bounded in time. Each phase starts the sample stack of
`strangler demo` (scripts/demo_stack.py: a fresh pair of databases on one private PostgreSQL,
the seeded monolith, the catalog service, the façade, the forward CDC stream and, with
extracted/catalog/reverse.yaml, the reverse one, in both phases alike) and puts the write
load of scripts/write_load.py on the façade (creates and updates of products through the route
catalog-write, reads, monolith orders that take stock), then switches:

1. **naive** (the baseline): `catalog-write` flipped to the catalog service by editing the
   routing file (`facade.edit.shift_weights`) and reloading, no hold, no fence; then back;
2. **gated** (once `cutover.writes` exists): `switch_writes` forward (hold at the façade, fence,
   reverse stream), back (rollback), forward again.

Each phase gets its own databases, so the naive flip's damage does not leak into the gated one.
After the load stops and the streams have applied everything, scripts/write_check.py reads both
stores and counts, per switch (writes due from it to the next), acknowledged writes lost and
creates doubled (from 1 s before it began: writes in flight then are its); from the clients' timings: errors, write latency p50/p99/max in the switch
window (its start to 1 s after it ended) against the steady seconds before it, and the pause the
clients saw; from the façade: the hold's duration (its metrics); from the switch: its estimate
and its measured pause. `--quick` is the small run the test uses. `--json` prints everything.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import typer  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench._harness import BenchError, Ratio, load_average, ratios_table, signals_as_interrupt  # noqa: E402
from common.postgres import EmbeddedPostgres  # noqa: E402
from common.processes import ProcessError  # noqa: E402
from scripts.demo_stack import Stack, sample_stack  # noqa: E402
from scripts.write_check import figures, judge, read_stores, wait_caught_up  # noqa: E402
from scripts.write_load import LoadSettings, WriteLoad, run_in_background  # noqa: E402

WRITE_ROUTE = "catalog-write"
AFTER_SWITCH = 1.0
"""Seconds after a switch ended that still belong to its window (released requests finish)."""
IN_FLIGHT = 1.0
"""Seconds before a switch began whose writes are counted with it (in flight when it began)."""


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How big a run is."""

    products: int
    steady: float
    """Seconds of load before the first switch (the latency reference)."""
    soak: float
    """Seconds of load after each switch."""
    load: LoadSettings


FULL = Sizes(products=5000, steady=8.0, soak=6.0, load=LoadSettings(rate=250, read_rate=50, order_rate=10, pool=200))
QUICK = Sizes(products=400, steady=3.0, soak=2.5, load=LoadSettings(rate=60, read_rate=10, order_rate=5, pool=40))

Switch = Callable[[Stack], dict[str, Any]]


# -- the switches --------------------------------------------------------------------------------


def naive(to: str) -> Switch:
    """Flip catalog-write to `to` by editing the routing file and reloading: no hold, no fence."""
    from facade.edit import shift_weights

    def switch(env: Stack) -> dict[str, Any]:
        shift_weights(env.routing_path, WRITE_ROUTE, {to: 100}, env=os.environ)
        response = httpx.post(f"{env.facade_url}/_strangler/reload", timeout=10)
        if response.status_code != 200:
            raise BenchError(f"the façade refused the edited {env.routing_path}: {response.text}")
        return {"direction": "forward" if to == "catalog" else "back", "outcome": "switched", "estimate": None, "pause_s": 0.0}

    return switch


def hold_metrics(env: Stack) -> dict[str, float]:
    """The façade's hold numbers of the write route: seconds held in total, requests held."""
    text = httpx.get(f"{env.facade_url}/_strangler/metrics", timeout=5).text
    numbers = {"hold_s": 0.0, "held": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("route") != WRITE_ROUTE:
                continue
            if sample.name == "strangler_hold_duration_seconds_sum":
                numbers["hold_s"] += sample.value
            elif sample.name == "strangler_held_requests_total":
                numbers["held"] += sample.value
    return numbers


# -- one phase -----------------------------------------------------------------------------------


def run_phase(
    name: str, switches: list[tuple[str, Switch]], *, server_url: str, sizes: Sizes, work_dir: Path, console: Console,
) -> dict[str, Any]:
    """A fresh stack, steady load, the switches with soaks between them; then the checker."""
    from cdc.spec import load_spec
    from scripts.demo_stack import SPEC_PATH, spec_env

    with sample_stack(database_url=server_url, products=sizes.products, work_dir=work_dir / name, console=console,
                      db_prefix=f"bench_{name}") as env:
        load = WriteLoad(env.facade_url, sizes.load)
        records: list[dict[str, Any]] = []
        with console.status(f"{name}: creating {sizes.load.pool} products for the load, then {sizes.steady:g}s of steady load…"):
            with run_in_background(load) as handle:
                started = handle.mark("load")
                time.sleep(sizes.steady)
                for label, switch in switches:
                    console.print(f"[cyan]→[/cyan] {name}: {label} under {sizes.load.rate:g} writes/s")
                    before = hold_metrics(env)
                    start = time.time()
                    result = switch(env)
                    end = time.time()
                    after = hold_metrics(env)
                    records.append({
                        "label": label, "start": start, "end": end, "result": result,
                        "facade": {k: after[k] - before[k] for k in after},
                    })
                    time.sleep(sizes.soak)
                stopped = time.time()
        with console.status(f"{name}: waiting for the streams to apply everything, then reading both stores…"):
            specs = {"forward": load_spec(SPEC_PATH, env={**os.environ, **spec_env(env)})}
            if env.reverse_spec is not None:
                specs["reverse"] = load_spec(env.reverse_spec, env={**os.environ, **spec_env(env)})
            caught_up = wait_caught_up(specs)
            rows = read_stores(env.legacy_db, env.catalog_db, sizes.load.run_id)
    verdicts = {store: judge(store, load.samples, rows[store]) for store in ("legacy", "service")}
    writes = [s for s in load.samples if s.kind in ("create", "update") and s.due >= started]
    switched = []
    for i, record in enumerate(records):
        until = records[i + 1]["start"] - IN_FLIGHT if i + 1 < len(records) else stopped
        since = record["start"] - IN_FLIGHT
        window = (record["start"], record["end"] + AFTER_SWITCH)
        steady_from = records[i - 1]["end"] + AFTER_SWITCH if i else started
        seen = figures(load.samples, window, before=(max(steady_from, record["start"] - sizes.steady), record["start"]))
        errors = figures(load.samples, (record["start"], until))
        per_store = {store: v.within(since, until) for store, v in verdicts.items()}
        result = record["result"]
        estimate = (result.get("estimate") or {}).get("pause_s")
        measured = result.get("pause_s")
        switched.append({
            "phase": name, "label": record["label"], "direction": result.get("direction"), "outcome": result.get("outcome"),
            "reason": result.get("reason", ""), "switch_s": record["end"] - record["start"],
            "lost": max(v["lost"] for v in per_store.values()), "doubled": max(v["doubled"] for v in per_store.values()),
            "per_store": per_store, "client_errors": errors.errors, "errors_by_status": errors.errors_by_status,
            "error_samples": errors.error_samples, "client_pause_s": seen.pause_s, "facade_hold_s": record["facade"]["hold_s"],
            "facade_held": record["facade"]["held"], "pause_s": measured, "estimate_s": estimate,
            "estimate_error": (measured / estimate - 1) if estimate and measured is not None else None,
            "latency_before_ms": seen.before_ms, "latency_window_ms": seen.window_ms, "added_ms": seen.added_ms,
            "timeline": result.get("timeline", []),
        })
    return {
        "phase": name, "run_id": sizes.load.run_id, "requests": len(load.samples),
        "writes_per_s": len(writes) / max(stopped - started, 1e-9), "caught_up_s": caught_up,
        "stores": {store: v.as_dict() for store, v in verdicts.items()}, "switches": switched,
    }


def gated_switches() -> list[tuple[str, Switch]] | None:
    """The write cutover's switches, or None while `cutover.writes` is not there."""
    try:
        from cutover.writes import switch_writes  # noqa: F401
    except ImportError:
        return None
    return None


# -- rendering -----------------------------------------------------------------------------------


def switches_table(switches: list[dict[str, Any]]) -> Table:
    table = Table(title="Write switches under load", title_justify="left")
    for column in ("phase", "switch", "outcome", "lost", "doubled", "client errors", "client pause", "façade hold",
                   "switch pause", "estimate", "added p50/p99/max"):
        table.add_column(column, justify="left" if column in ("phase", "switch", "outcome") else "right")
    for s in switches:
        added = s["added_ms"]

        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f} s"

        table.add_row(
            s["phase"], s["label"], s["outcome"] or "", str(s["lost"]), str(s["doubled"]), str(s["client_errors"]),
            seconds(s["client_pause_s"]), seconds(s["facade_hold_s"] or None), seconds(s["pause_s"] if s["estimate_s"] else None),
            seconds(s["estimate_s"]), f"{added['p50']:.0f} / {added['p99']:.0f} / {added['max']:.0f} ms",
        )
    return table


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
    ]


def main(
    quick: bool = typer.Option(False, "--quick", help="A small run (lower rate, short soaks): a smoke check, not the targets' sizes."),
    rate: float = typer.Option(None, help="Product writes per second (default 250; 60 with --quick)."),
    naive_baseline: bool = typer.Option(True, "--naive/--no-naive", help="Run the naive flip as the baseline first."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout (tables go to stderr)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temp directory (logs of every process) and print its path."),
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
    load_before = load_average()
    phases: list[dict[str, Any]] = []
    notes: list[str] = []
    pg = EmbeddedPostgres(tmp / "pg", ephemeral=True)
    try:
        with console.status("starting PostgreSQL"):
            pg.start()
        plan: list[tuple[str, list[tuple[str, Switch]]]] = []
        if naive_baseline:
            plan.append(("naive", [("naive flip to catalog", naive("catalog")), ("naive flip back", naive("monolith"))]))
        gated = gated_switches()
        if gated is None:
            notes.append("cutover.writes is not available in this tree: only the naive baseline was measured")
        else:
            plan.append(("gated", gated))
        for name, switches in plan:
            phase = run_phase(name, switches, server_url=pg.url(), sizes=sizes, work_dir=tmp, console=console)
            # Every run loads with markers of its own.
            sizes = Sizes(products=sizes.products, steady=sizes.steady, soak=sizes.soak,
                          load=LoadSettings(**{**sizes.load.__dict__, "run_id": LoadSettings().run_id}))
            phases.append(phase)
    except (BenchError, ProcessError, RuntimeError) as exc:
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
                    "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"quick": quick, "products": sizes.products, "steady_s": sizes.steady, "soak_s": sizes.soak,
                     "rate": sizes.load.rate, "read_rate": sizes.load.read_rate, "order_rate": sizes.load.order_rate,
                     "pool": sizes.load.pool},
        "phases": phases, "switches": switches, "ratios": [r.as_dict() for r in ratios], "notes": notes,
    }
    console.print(switches_table(switches))
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
