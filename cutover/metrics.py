"""The runner's state as Prometheus gauges, written as a text file (node_exporter's textfile
collector reads it): current step, weight, status and each gate's last verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from cutover.state import RunState

__all__ = ["STATUSES", "VERDICT_VALUES", "render"]

STATUSES = ("new", "running", "soaking", "paused", "awaiting_approval", "rolled_back", "aborted", "done")
VERDICT_VALUES = {"pass": 1, "inconclusive": 0, "fail": -1}


def render(plan: str, state: RunState, verdicts: Sequence[Mapping[str, Any]]) -> bytes:
    """The exposition text of one plan's run."""
    registry = CollectorRegistry()
    step = Gauge("strangler_cutover_step", "Index of the step in force (-1: none yet).", ["plan"], registry=registry)
    weight = Gauge("strangler_cutover_weight_percent", "Percent of the route's traffic to the target.", ["plan"], registry=registry)
    status = Gauge("strangler_cutover_status", "1 for the run's current status.", ["plan", "status"], registry=registry)
    gate = Gauge("strangler_cutover_gate", "Last verdict per gate: 1 pass, 0 inconclusive, -1 fail.", ["plan", "gate"], registry=registry)
    step.labels(plan).set(state.position)
    weight.labels(plan).set(state.weight)
    for name in STATUSES:
        status.labels(plan, name).set(1 if state.status == name else 0)
    for verdict in verdicts:
        gate.labels(plan, str(verdict["gate"])).set(VERDICT_VALUES.get(str(verdict["result"]), 0))
    return generate_latest(registry)
