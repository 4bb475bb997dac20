"""The demo's read cutover: `strangler cutover run` on a plan for the demo's own stack.

`cutover.sample_stack.write_plan` writes the plan (steps 10 → 50 → 100, short soaks, the error-rate,
latency, CDC and verify gates, the journal in the catalog database, events in the work dir); `run_cutover` runs
it with `cutover.run`, the function behind `strangler cutover run`, while a `Traffic` thread
reads products through the façade, and records each step (requests per upstream, errors, the
gate verdicts and the decision) from the runner's events; `print_step` and `print_journal`
render them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console


@dataclass
class StepResult:
    """One step of a cutover run as the façade and the runner saw it."""

    run: str
    weight: float
    per_upstream: dict[str, int]
    errors: int
    decision: str = ""
    reason: str = ""
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.per_upstream.values())

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "total": self.total}


@dataclass
class RunOutcome:
    """How one `cutover run` ended: its status, reason and the routing changes it made."""

    label: str
    status: str
    reason: str
    actions: list[str]


class Traffic:
    """Anonymous readers through the façade, two reads each (each its own sticky assignment
    cookie), in a thread until stopped; `hold()` stops sending while a service restarts."""

    def __init__(self, url: str, products: int) -> None:
        self.url = url
        self.products = max(1, min(products, 1000))
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._sending = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-traffic", daemon=True)

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10, trust_env=False) as client:
            while not self._stop.is_set():
                if not self._sending.is_set():
                    self._idle.set()
                    self._sending.wait(0.1)
                    continue
                self._idle.clear()
                if self.sent % 2 == 0:
                    client.cookies.clear()
                try:
                    ok = client.get(f"/api/products/{1 + self.sent % self.products}").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.sent += 1
                self.failed += 0 if ok else 1

    def start(self) -> Traffic:
        self._sending.set()
        self._thread.start()
        return self

    def hold(self) -> None:
        """Stop sending and wait until the request in flight has finished."""
        self._sending.clear()
        self._idle.wait(15)

    def go(self) -> None:
        self._sending.set()

    def stop(self) -> None:
        self._stop.set()
        self._sending.set()
        self._thread.join(timeout=15)


class StepRecorder:
    """Turns the runner's events into `StepResult`s: counters at `applied`, deltas at `decision`."""

    def __init__(
        self, run: str, traffic: Traffic, counts: Callable[[], dict[str, float]],
        on_step: Callable[[StepResult], None], on_applied: Callable[[float, str], None],
    ) -> None:
        self.run = run
        self.traffic = traffic
        self.counts = counts
        self.on_step = on_step
        self.on_applied = on_applied
        self.results: list[StepResult] = []
        self._start: tuple[dict[str, float], int] | None = None

    def __call__(self, event: Mapping[str, Any]) -> None:
        kind = event["event"]
        detail = event.get("detail") or {}
        if kind == "applied":
            self.on_applied(float(event.get("weight") or 0), str(detail.get("why", "advance")))
            self._start = (self.counts(), self.traffic.failed)
        elif kind == "decision" and self._start is not None:
            before, failed = self._start
            after = self.counts()
            per_upstream = {name: int(after.get(name, 0) - before.get(name, 0)) for name in ("monolith", "catalog")}
            result = StepResult(
                self.run, float(event.get("weight") or 0), per_upstream, self.traffic.failed - failed,
                str(detail.get("decision", "")), str(detail.get("reason", "")), list(detail.get("verdicts", [])),
            )
            self.results.append(result)
            self.on_step(result)


def run_cutover(plan_path: Path, env: Mapping[str, str], on_event: Callable[[dict[str, Any]], None]) -> RunOutcome:
    """One `strangler cutover run` of the plan, through its Python function."""
    import cutover

    plan = cutover.load_plan(plan_path, env=env)
    result = cutover.run(plan, env=env, exit_when_paused=True, on_event=on_event)
    return RunOutcome("", result.status, result.reason, list(result.actions))


def journal_summary(plan_path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    """What `strangler cutover status PLAN --json` prints: the journal, folded."""
    import cutover

    return cutover.status(cutover.load_plan(plan_path, env=env), env=env)


def print_step(console: Console, result: StepResult) -> None:
    """One soaked step: requests per upstream, errors, each gate's verdict, the decision."""
    mark = "[green]✓[/green]" if result.decision == "advance" else "[red]✗[/red]"
    gates = ", ".join(f"{v['gate']} {v['result']}" for v in result.verdicts)
    console.print(
        f"    {mark} {result.weight:g}%: {result.total} requests ({result.per_upstream['monolith']} → monolith, "
        f"{result.per_upstream['catalog']} → catalog), {result.errors} errors; gates: {gates} → {result.decision}"
    )
    for verdict in result.verdicts:
        if verdict["result"] != "pass":
            console.print(f"        {verdict['gate']}: {verdict['reason']}", markup=False, highlight=False)


def print_journal(console: Console, plan_path: Path, status: Mapping[str, Any]) -> None:
    """The journal's summary, as `strangler cutover status PLAN` shows it."""
    console.print(
        f"[green]✓[/green] journal (strangler cutover status {plan_path}): {status['status']}, step {status['step']}, "
        f"{status['weight']:g}% to catalog, {status['entries']} entries"
    )
    for item in status.get("history") or []:
        console.print(f"    #{item['id']} {item['kind']}: {item['text']}", markup=False, highlight=False)
