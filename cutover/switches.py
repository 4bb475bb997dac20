"""Write switches under live write load, measured: what `make demo` and bench/cutover.py show.

`run_switches` puts the load of `cutover.writeload` on a running sample stack (the façade's
product writes, reads, monolith orders), lets it run steady, performs each switch with a soak
after it, stops the load, waits until both streams have applied everything and judges both
stores with `cutover.writecheck`. Per switch (writes sent from 1 s before it began to 1 s before
the next one: those in flight when it began are its): acknowledged writes lost and creates
doubled (the worse of the two stores), client errors, write latency p50/p99/max in the switch
window (its start to 1 s after its end) against the steady load before it, the pause the
clients saw, the façade's hold (its metrics), and the switch's own estimate and measured pause.

The switches: `naive(to)` flips the write route by editing the routing file and reloading (no
hold, no fence: the baseline); `gated(direction, plan)` is `cutover.writes.switch_writes`, the
function behind `strangler cutover writes` and `strangler cutover rollback --writes`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from cutover.sample_stack import SPEC_PATH, Stack, cutover_env, spec_env
from cutover.writecheck import figures, judge, read_stores, wait_caught_up
from cutover.writeload import WRITE_KINDS, LoadSettings, WriteLoad, run_in_background

__all__ = ["Switch", "SwitchFailed", "SwitchTiming", "gated", "hold_metrics", "naive", "print_switch", "run_switches", "switches_table"]

WRITE_ROUTE = "catalog-write"
AFTER_SWITCH = 1.0
"""Seconds after a switch ended that still belong to its window (released requests finish)."""
IN_FLIGHT = 1.0
"""Seconds before a switch began whose writes are counted with it (in flight when it began)."""

Switch = Callable[[Stack], Mapping[str, Any]]
"""Performs one switch on the stack; returns what `WriteSwitchResult.as_dict()` has (or part of it)."""


class SwitchFailed(Exception):
    """A switch could not be carried out at all (not an aborted or refused switch: those are results)."""


@dataclass(frozen=True, kw_only=True)
class SwitchTiming:
    """How long the load runs around the switches."""

    steady: float
    """Seconds of load before the first switch (the latency reference)."""
    soak: float
    """Seconds of load after each switch."""


def naive(to: str) -> Switch:
    """Flip catalog-write to `to` by editing the routing file and reloading: no hold, no fence."""
    from facade.edit import shift_weights
    from facade.exceptions import FacadeError

    def switch(env: Stack) -> dict[str, Any]:
        try:
            shift_weights(env.routing_path, WRITE_ROUTE, {to: 100}, env=os.environ)
        except FacadeError as exc:
            raise SwitchFailed(f"the naive flip could not edit {env.routing_path}: {exc}") from exc
        response = httpx.post(f"{env.facade_url}/_strangler/reload", timeout=10)
        if response.status_code != 200:
            raise SwitchFailed(f"the façade refused the edited {env.routing_path}: {response.text}")
        return {"direction": "forward" if to == "catalog" else "back", "outcome": "switched", "estimate": None, "pause_s": 0.0}

    return switch


def gated(direction: str, plan_path: Path) -> Switch:
    """`strangler cutover writes PLAN` (forward) or `strangler cutover rollback PLAN --writes` (back)."""

    def switch(env: Stack) -> Mapping[str, Any]:
        import cutover
        from cutover.exceptions import CutoverError
        from cutover.writes import switch_writes

        run_env = {**os.environ, **cutover_env(env)}
        try:
            plan = cutover.load_plan(plan_path, env=run_env)
            result: Mapping[str, Any] = switch_writes(plan, env=run_env, direction=direction, dry_run=False).as_dict()
        except CutoverError as exc:
            raise SwitchFailed(f"strangler cutover writes ({direction}) failed: {exc}") from exc
        return result

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


def run_switches(
    env: Stack, name: str, switches: list[tuple[str, Switch]], *, load: LoadSettings, timing: SwitchTiming, console: Console,
) -> dict[str, Any]:
    """Steady load, the switches with soaks between them; then the checker (see the module)."""
    from cdc.spec import load_spec

    writer = WriteLoad(env.facade_url, load)
    records: list[dict[str, Any]] = []
    with console.status(f"{name}: creating {load.pool} products for the write load, then {timing.steady:g}s of steady load…"):
        with run_in_background(writer) as handle:
            started = handle.mark("load")
            time.sleep(timing.steady)
            for label, switch in switches:
                console.print(f"[cyan]→[/cyan] {label} under {load.rate:g} writes/s", highlight=False)
                before = hold_metrics(env)
                start = time.time()
                result = dict(switch(env))
                end = time.time()
                after = hold_metrics(env)
                records.append({"label": label, "start": start, "end": end, "result": result,
                                "facade": {k: after[k] - before[k] for k in after}})
                time.sleep(timing.soak)
            stopped = time.time()
    with console.status(f"{name}: waiting for the streams to apply everything, then reading both stores…"):
        specs = {"forward": load_spec(SPEC_PATH, env={**os.environ, **spec_env(env)})}
        if env.reverse_spec is not None:
            specs["reverse"] = load_spec(env.reverse_spec, env={**os.environ, **spec_env(env)})
        caught_up = wait_caught_up(specs)
        rows = read_stores(env.legacy_db, env.catalog_db, load.run_id)
    verdicts = {store: judge(store, writer.samples, rows[store]) for store in ("legacy", "service")}
    writes = [s for s in writer.samples if s.kind in WRITE_KINDS and s.due >= started]
    switched = []
    for i, record in enumerate(records):
        since = record["start"] - IN_FLIGHT
        until = records[i + 1]["start"] - IN_FLIGHT if i + 1 < len(records) else stopped
        window = (record["start"], record["end"] + AFTER_SWITCH)
        steady_from = records[i - 1]["end"] + AFTER_SWITCH if i else started
        seen = figures(writer.samples, window, before=(max(steady_from, record["start"] - timing.steady), record["start"]))
        errors = figures(writer.samples, (since, until))
        per_store = {store: v.within(since, until) for store, v in verdicts.items()}
        result = record["result"]
        estimate = (result.get("estimate") or {}).get("pause_s")
        measured = result.get("pause_s")
        switched.append({
            "phase": name, "label": record["label"], "direction": result.get("direction"), "outcome": result.get("outcome"),
            "reason": result.get("reason") or "", "switch_s": record["end"] - record["start"],
            "lost": max(v["lost"] for v in per_store.values()), "doubled": max(v["doubled"] for v in per_store.values()),
            "per_store": per_store, "client_errors": errors.errors, "errors_by_status": errors.errors_by_status,
            "error_samples": errors.error_samples, "client_pause_s": seen.pause_s, "facade_hold_s": record["facade"]["hold_s"],
            "facade_held": record["facade"]["held"], "pause_s": measured, "estimate_s": estimate,
            # How far the estimate was from the pause measured, relative to it (target: within ±50%).
            "estimate_error": (estimate / measured - 1) if estimate and measured else None,
            "latency_before_ms": seen.before_ms, "latency_window_ms": seen.window_ms, "added_ms": seen.added_ms, "slowest": seen.slowest,
            "hold_id": result.get("hold_id"), "fence": result.get("fence"), "timeline": result.get("timeline", []),
        })
    return {
        "phase": name, "run_id": load.run_id, "requests": len(writer.samples),
        "writes_per_s": len(writes) / max(stopped - started, 1e-9), "caught_up_s": caught_up,
        "stores": {store: v.as_dict() for store, v in verdicts.items()}, "switches": switched,
    }


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def switches_table(switches: list[dict[str, Any]]) -> Table:
    """One row per switch: lost, doubled, errors, the pauses, the estimate, the added latency."""
    table = Table(title="Write switches under load", title_justify="left")
    for column in ("phase", "switch", "outcome", "lost", "doubled", "client errors", "client pause", "façade hold",
                   "switch pause", "estimate", "estimate error", "added p50/p99/max (window − before, each)"):
        table.add_column(column, justify="left" if column in ("phase", "switch", "outcome") else "right")
    for s in switches:
        added = s["added_ms"]
        table.add_row(
            s["phase"], s["label"], s["outcome"] or "", str(s["lost"]), str(s["doubled"]), str(s["client_errors"]),
            _seconds(s["client_pause_s"]), _seconds(s["facade_hold_s"] or None), _seconds(s["pause_s"] if s["estimate_s"] else None),
            _seconds(s["estimate_s"]), "-" if s["estimate_error"] is None else f"{s['estimate_error']:+.0%}",
            f"{added['p50']:.0f} / {added['p99']:.0f} / {added['max']:.0f} ms",
        )
    return table


def print_switch(console: Console, s: Mapping[str, Any]) -> None:
    """One switch's figures as a line (and its errors' first examples)."""
    mark = "[green]✓[/green]" if s["outcome"] == "switched" and not (s["lost"] or s["doubled"] or s["client_errors"]) else "[red]✗[/red]"
    added = s["added_ms"]
    estimate = f", estimate {s['estimate_s']:.3f} s" if s["estimate_s"] is not None else ""
    pause = f", pause {s['pause_s']:.3f} s" if s["pause_s"] is not None else ""
    console.print(
        f"    {mark} {s['label']}: {s['outcome']}; {s['lost']} lost, {s['doubled']} doubled, {s['client_errors']} client errors"
        f"{pause}{estimate} (clients saw {s['client_pause_s']:.3f} s, the façade held {s['facade_hold_s']:.3f} s); "
        f"added write latency p50/p99/max {added['p50']:.0f} / {added['p99']:.0f} / {added['max']:.0f} ms",
        highlight=False,
    )
    if s.get("reason"):
        console.print(f"        {s['reason']}", markup=False, highlight=False)
    for line in s.get("error_samples") or []:
        console.print(f"        {line}", markup=False, highlight=False)
