"""The cutover runner: one loop for `run` and `--dry-run`, every decision journaled before it acts.

Each turn folds the journal (`cutover.state.fold`), acts on operator requests, and then does the
one next thing: apply the next step's change, soak and read the gates, wait for an approval, or
roll back. A change is an `Action` (do, inverse, description): its intent is journaled, then the
executor rewrites the routing file (comments kept, `facade.edit`) and waits until every replica
serves the new file, then `applied` is journaled with the replicas' versions. After a SIGKILL
anywhere, `run` again finds an intent without `applied`, looks at the file and finishes it.

The dry run is the same loop with a `DryExecutor` (writes nothing, waits for nothing), a
`MemoryJournal` and one live reading per step in place of a soak: what it prints is the list of
actions the real run takes on the same readings.

A routing file whose hash is not the one the journal explains was edited by hand: the run pauses
and says so; `resume` adopts the file as it is (journaled) and carries on from there.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from common.waiting import TimedOut, wait_until
from cutover.exceptions import CutoverError
from cutover.gates import Decision, RouteTraffic, UpstreamTraffic, Verdict, decide, evaluate
from cutover.journal import Entry, JournalStore
from cutover.plan import Plan, Step
from cutover.readings import Sources
from cutover.state import RunState, fold
from facade.config import ConfigError, load_config
from cutover.metrics import render
from facade.edit import set_shadow_sample, shift_weights, write_atomically
from facade.exceptions import FacadeError

__all__ = ["Action", "DryExecutor", "Executor", "LiveExecutor", "RunResult", "Runner", "file_hash", "route_state"]


def file_hash(path: str | Path) -> str:
    """The routing file's content hash as the façade reports it (`content_hash`)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError as exc:
        raise CutoverError(f"cannot read the routing file {path}: {exc.strerror}; check routing: in the plan") from exc


def route_state(plan: Plan, env: Mapping[str, str] | None = None) -> tuple[float, float | None]:
    """(weight to the target, shadow sample to the target or None) of the plan's first route, from the file."""
    try:
        config = load_config(plan.routing, env=env)
    except ConfigError as exc:
        raise CutoverError(f"the routing file does not load: {exc.problems[0]}") from exc
    route = next((item for item in config.routes if item.id == plan.routes[0]), None)
    if route is None:
        raise CutoverError(f"route {plan.routes[0]!r} is no longer in {plan.routing}; put it back or fix the plan")
    shadow = route.shadow.sample if route.shadow is not None and route.shadow.to == plan.target else None
    return float(route.to.get(plan.target, 0.0)), shadow


@dataclass(frozen=True)
class Action:
    """One change of the routes: a weight to the target or the shadow sample; `inverse()` undoes it."""

    kind: Literal["weight", "shadow"]
    routes: tuple[str, ...]
    target: str
    old: float | None
    new: float

    def inverse(self) -> Action:
        return Action(self.kind, self.routes, self.target, self.new, self.old if self.old is not None else 0.0)

    def describe(self) -> str:
        routes = ", ".join(self.routes)
        before = "off" if self.old is None else f"{self.old:g}%"
        if self.kind == "shadow":
            return f"{routes}: shadow to {self.target} {before} → {self.new:g}% sample"
        return f"{routes}: {self.target} {before} → {self.new:g}%"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "routes": list(self.routes), "target": self.target, "old": self.old, "new": self.new}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Action:
        return cls(data["kind"], tuple(data["routes"]), data["target"], data.get("old"), float(data["new"]))

    def done_in(self, weight: float, shadow: float | None) -> bool:
        return (weight if self.kind == "weight" else shadow) == self.new

    def undone_in(self, weight: float, shadow: float | None) -> bool:
        return (weight if self.kind == "weight" else shadow) == self.old


class Executor(Protocol):
    """Carries out actions: the live one edits the file and waits for the replicas; the dry one records."""

    def apply(self, action: Action) -> None: ...

    def wait_served(self, expected_hash: str) -> dict[str, str]: ...


class LiveExecutor:
    """Rewrites the routing file (comments kept) and waits until every replica serves it."""

    def __init__(self, plan: Plan, sources: Sources, *, env: Mapping[str, str] | None = None,
                 on_wait: Callable[[str], None] | None = None) -> None:
        self.plan = plan
        self.sources = sources
        self.env = env
        self.on_wait = on_wait

    def apply(self, action: Action) -> None:
        try:
            for route in action.routes:
                if action.kind == "weight":
                    shift_weights(self.plan.routing, route, {self.plan.target: action.new}, env=self.env)
                else:
                    set_shadow_sample(self.plan.routing, route, self.plan.target, action.new, env=self.env)
        except ConfigError as exc:
            raise CutoverError(f"the routing file cannot take the change ({action.describe()}): {exc.problems[0]}") from exc
        except FacadeError as exc:
            raise CutoverError(f"cannot {action.describe()}: {exc}") from exc
        if self.plan.facade.reload == "api":
            self.sources.reload()

    def wait_served(self, expected_hash: str) -> dict[str, str]:
        lagging: list[str] = []

        def served() -> dict[str, str] | None:
            states = self.sources.replicas()
            lagging[:] = [f"{s.url} (hash {s.content_hash})" for s in states if s.content_hash != expected_hash]
            for state in states:
                if state.content_hash != expected_hash and state.last_error:
                    raise CutoverError(f"the façade replica {state.url} rejected the routing file: {state.last_error}")
            if lagging:
                if self.on_wait is not None:
                    self.on_wait(f"waiting for {', '.join(lagging)} to serve {expected_hash}")
                return None
            return {s.url: s.version for s in states}

        try:
            return wait_until(served, self.plan.facade.reload_timeout, 0.05, what="every replica to serve the new routing file")
        except TimedOut as exc:
            raise CutoverError(
                f"after {self.plan.facade.reload_timeout:g}s {', '.join(lagging)} still do not serve the routing file "
                f"with hash {expected_hash}; check those replicas (their /_strangler/routes), then `strangler cutover resume`"
            ) from exc


class DryExecutor:
    """Changes nothing; keeps the actions it was asked to do."""

    def __init__(self) -> None:
        self.actions: list[Action] = []

    def apply(self, action: Action) -> None:
        self.actions.append(action)

    def wait_served(self, expected_hash: str) -> dict[str, str]:
        return {}


@dataclass
class RunResult:
    """How a run ended and what it did."""

    status: str
    reason: str
    actions: list[str] = field(default_factory=list)
    state: RunState | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "actions": self.actions}


def _traffic_dict(traffic: RouteTraffic) -> dict[str, Any]:
    return {name: {"requests": t.requests, "errors": t.errors, "buckets": [list(b) for b in t.buckets]}
            for name, t in traffic.upstreams.items()}


def _traffic_from(data: Mapping[str, Any] | None) -> RouteTraffic:
    if not data:
        return RouteTraffic()
    return RouteTraffic({name: UpstreamTraffic(int(t["requests"]), int(t["errors"]), tuple((float(b[0]), int(b[1])) for b in t["buckets"]))
                         for name, t in data.items()})


class Runner:
    """Runs a plan's steps; see the module docstring."""

    def __init__(
        self,
        plan: Plan,
        journal: JournalStore,
        executor: Executor,
        sources: Sources,
        *,
        dry_run: bool = False,
        env: Mapping[str, str] | None = None,
        exit_when_paused: bool = False,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_view: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.plan = plan
        self.journal = journal
        self.executor = executor
        self.sources = sources
        self.dry_run = dry_run
        self.env = env
        self.exit_when_paused = exit_when_paused
        self.on_event = on_event
        self.on_view = on_view
        self.clock = clock
        self.sleep = sleep
        self.actions: list[str] = []
        self._old = ""
        self._run_start: RouteTraffic = RouteTraffic()
        self._window_start: RouteTraffic | None = None
        self._simulated: tuple[float, float | None] | None = None

    # -- journal and events ----------------------------------------------------------------------

    def _write(self, kind: str, **fields: Any) -> Entry:
        entry = self.journal.write(kind, **fields)
        event = {"plan": self.plan.name, "event": kind, "dry_run": self.dry_run, **entry.as_dict()}
        event.pop("holder", None)
        if self.on_event is not None:
            self.on_event(event)
        if not self.dry_run:
            _emit(self.plan, event)
            if self.plan.events.metrics_file:
                state = fold(self.journal.entries())
                verdicts = (state.last_reading or {}).get("verdicts", [])
                Path(self.plan.events.metrics_file).parent.mkdir(parents=True, exist_ok=True)
                write_atomically(Path(self.plan.events.metrics_file), render(self.plan.name, state, verdicts).decode())
        return entry

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> RunResult:
        """Run until done, rolled back, aborted (or, with exit_when_paused / a dry run, paused)."""
        route = load_config(self.plan.routing, env=self.env).routes
        current = next(item for item in route if item.id == self.plan.routes[0])
        self._old = next((name for name in current.to if name != self.plan.target), "")
        state = fold(self.journal.entries())
        if state.intent is not None:
            self._finish(state, Action.from_dict(state.intent.detail["action"]), state.intent)
            state = fold(self.journal.entries())
        weight, shadow = route_state(self.plan, self.env)
        self._run_start = self.sources.traffic() if not self.dry_run else RouteTraffic()
        self._write("run.start", weight=weight, file_hash=file_hash(self.plan.routing),
                    detail={"shadow": shadow, "steps": [s.label() for s in self.plan.steps], "traffic": _traffic_dict(self._run_start)})
        while True:
            state = fold(self.journal.entries())
            outcome = self._requests(state)
            if outcome is not None:
                return outcome
            state = fold(self.journal.entries())
            if state.status == "done":
                return self._result(state, "every step passed")
            if self._postponed(state):
                if self.exit_when_paused or self.dry_run:
                    return self._result(state, state.reason or "postponed")
                self._idle()
                continue
            if state.intent is not None:
                self._finish(state, Action.from_dict(state.intent.detail["action"]), state.intent)
                continue
            if state.intent is None and state.file_hash != file_hash(self.plan.routing):
                self._write("paused", detail={"reason": (
                    f"{self.plan.routing} was edited by hand during the run (hash {file_hash(self.plan.routing)}, the journal "
                    f"explains {state.file_hash}); check it, then `strangler cutover resume` adopts it as it is")})
                continue
            if state.status == "awaiting_approval":
                if self.dry_run:
                    self._write("approved", step=state.position, detail={"reason": "dry run: assumed approved"})
                    continue
                self._idle()
                continue
            if state.status == "soaking":
                outcome = self._soak(state)
                if outcome is not None:
                    return outcome
                continue
            if state.status in ("rolled_back", "aborted"):
                return self._result(state, state.reason)
            self._advance(state)

    def _result(self, state: RunState, reason: str) -> RunResult:
        return RunResult(state.status, reason, list(self.actions), state)

    def _idle(self) -> None:
        if hasattr(self.journal, "renew"):
            self.journal.renew()  # type: ignore[attr-defined]
        self.sleep(min(self.plan.interval, 0.2))

    def _postponed(self, state: RunState) -> bool:
        """Paused, or the plan's postpone file exists (journaled once each way)."""
        flag = self.plan.postpone_file
        if flag is not None and not self.dry_run:
            present = Path(flag).exists()
            by_flag = state.status == "paused" and state.reason.startswith("postpone file")
            if present and state.status != "paused":
                self._write("paused", detail={"reason": f"postpone file {flag} exists; remove it to carry on"})
                return True
            if by_flag and not present:
                self._write("resumed", detail={"reason": f"postpone file {flag} removed"})
                return False
        return state.status == "paused"

    def _routes_now(self) -> tuple[float, float | None]:
        """The routes' weight and shadow sample: from the file, or in a dry run as the run would have left them."""
        if self.dry_run and self._simulated is not None:
            return self._simulated
        return route_state(self.plan, self.env)

    # -- requests ---------------------------------------------------------------------------------

    def _requests(self, state: RunState) -> RunResult | None:
        for request in state.requests:
            kind = request.kind.removeprefix("request.")
            if kind == "pause":
                self._write("paused", detail={"reason": request.detail.get("reason") or "paused by `strangler cutover pause`", "request": request.id})
            elif kind == "resume":
                weight, shadow = route_state(self.plan, self.env)
                current = file_hash(self.plan.routing)
                if current != state.file_hash and state.intent is None:
                    self._write("adopted", weight=weight, file_hash=current, detail={"shadow": shadow, "request": request.id,
                                "reason": "resumed after a hand edit: the file as it is now"})
                self._write("resumed", detail={"request": request.id})
            elif kind == "approve":
                if state.status == "awaiting_approval":
                    self._write("approved", step=state.position, detail={"request": request.id})
                else:
                    self._write("ignored", detail={"request": request.id, "reason": "nothing waits for an approval"})
            elif kind in ("abort", "rollback"):
                to = -1 if kind == "abort" else int(request.detail.get("to", -1))
                why = "abort" if kind == "abort" else "rollback"
                self._rollback(state, to, why, f"{why} requested", request=request.id)
                return self._result(fold(self.journal.entries()), f"{why} requested")
            state = fold(self.journal.entries())
        return None

    # -- steps ------------------------------------------------------------------------------------

    def _weight_at(self, index: int) -> float:
        """The target's weight once step `index` is in force (-1 and `shadow`: 0)."""
        weight = 0.0
        for step in self.plan.steps[: index + 1]:
            if step.weight is not None:
                weight = step.weight
        return weight

    def _advance(self, state: RunState) -> None:
        index = state.position + 1
        if index >= len(self.plan.steps):
            self._write("done", step=state.position, weight=state.weight, detail={"reason": "every step passed"})
            return
        step = self.plan.steps[index]
        if step.kind == "approve":
            self.actions.append(f"wait for approval (`strangler cutover approve {self.plan.name}`)")
            self._write("awaiting_approval", step=index, weight=state.weight)
            return
        weight, shadow = self._routes_now()
        if step.kind == "shadow":
            action = Action("shadow", self.plan.routes, self.plan.target, shadow, 100.0)
        else:
            action = Action("weight", self.plan.routes, self.plan.target, weight, float(step.weight or 0))
        self._change(action, index, "advance")

    def _change(self, action: Action, index: int, why: str, request: int | None = None) -> None:
        detail: dict[str, Any] = {"action": action.as_dict(), "description": action.describe(), "why": why,
                                  "before_hash": file_hash(self.plan.routing)}
        if request is not None:
            detail["request"] = request
        self.actions.append(action.describe())
        intent = self._write("intent", step=index, weight=action.new if action.kind == "weight" else None, detail=detail)
        self._finish(fold(self.journal.entries()), action, intent)

    def _finish(self, state: RunState, action: Action, intent: Entry) -> None:
        """Carry an intent through: apply it unless the file already has it, wait for the replicas, journal `applied`."""
        weight, shadow = self._routes_now()
        if not action.done_in(weight, shadow):
            if not self.dry_run and not action.undone_in(weight, shadow):
                self._write("paused", detail={"reason": (
                    f"{self.plan.routing} gives {self.plan.target} {weight:g}% (shadow {shadow}), neither before nor after "
                    f"'{action.describe()}': it was edited by hand; check it, then `strangler cutover resume`")})
                return
            self.executor.apply(action)
        expected = file_hash(self.plan.routing)
        try:
            versions = self.executor.wait_served(expected)
        except CutoverError as exc:
            self._write("paused", detail={"reason": str(exc)})
            return
        weight, shadow = self._routes_now()
        if self.dry_run:
            weight, shadow = (action.new, shadow) if action.kind == "weight" else (weight, action.new)
            self._simulated = (weight, shadow)
        self._window_start = None
        self._write("applied", step=intent.step, weight=weight, file_hash=expected,
                    config_version=",".join(sorted(set(versions.values()))) or None,
                    detail={"why": intent.detail.get("why", "advance"), "replicas": versions, "shadow": shadow,
                            "description": action.describe(), **({"request": intent.detail["request"]} if "request" in intent.detail else {})})

    def _rollback(self, state: RunState, to: int, why: str, reason: str, request: int | None = None) -> None:
        weight = 0.0 if to < 0 else self._weight_at(to)
        current, _shadow = self._routes_now()
        action = Action("weight", self.plan.routes, self.plan.target, current, weight)
        self._change(action, to, why, request=request)

    def _rollback_target(self, state: RunState) -> int:
        if self.plan.on_fail == "zero":
            return -1
        index = state.passed if state.passed < state.position else state.position - 1
        while index >= 0 and self.plan.steps[index].kind == "approve":
            index -= 1
        return index

    # -- soaking ----------------------------------------------------------------------------------

    def _soak(self, state: RunState) -> RunResult | None:
        index = state.position
        step = self.plan.steps[index]
        soak = self.plan.soak_of(step)
        since = state.step_since or self.clock()
        if self._window_start is None:
            last = state.last_reading or {}
            if last.get("step") == index and last.get("since") == since and not self.dry_run:
                self._window_start = _traffic_from(last.get("window_start"))
            else:
                self._window_start = self.sources.traffic() if not self.dry_run else RouteTraffic()
        # A dry run has no window of its own: it judges the shadow comparisons of the last soak's length.
        shadow_since = self.clock() - soak.min_time if self.dry_run else since
        readings, _now = self.sources.read(
            window_start=self._window_start, run_start=self._run_start, since=shadow_since, step=step.label(),
            weight=self._weight_at(index), last_verify=state.last_verify,
            on_verify=lambda identical, summary: self._write("verify", detail={"identical": identical, "summary": summary}),
        )
        verdicts = evaluate(self.plan.gates, readings, target=self.plan.target, old=self._old,
                            weight=self._weight_at(index))
        elapsed = self.clock() - since
        requests = readings.window.requests
        if self.dry_run:
            elapsed = max(elapsed, soak.min_time)  # a dry run judges the live readings as they are
        decision = decide(verdicts, soak, self.plan.on_inconclusive, elapsed=elapsed, requests=requests)
        detail = self._reading(index, since, step, elapsed, requests, verdicts, decision)
        self._view(detail)
        if decision.action == "soak":
            if self.dry_run:
                self.actions.append(f"soak {step.label()} up to {self.plan.on_inconclusive.max_soak:g}s: {decision.reason}")
                self._write("soak", step=index, detail=detail)
                return self._result(fold(self.journal.entries()), decision.reason)
            self._write("soak", step=index, detail=detail)
            self.sleep(self.plan.interval)
            return None
        self._write("decision", step=index, weight=state.weight, detail=detail)
        if decision.action == "advance":
            return None
        if decision.action == "pause":
            self.actions.append(f"pause: {decision.reason}")
            self._write("paused", step=index, detail={"reason": decision.reason})
            return None
        to = self._rollback_target(state)
        self._rollback(state, to, "fail", decision.reason)
        return self._result(fold(self.journal.entries()), decision.reason)

    def _reading(self, index: int, since: float, step: Step, elapsed: float, requests: int,
                 verdicts: list[Verdict], decision: Decision) -> dict[str, Any]:
        return {
            "step": index, "label": step.label(), "since": since, "elapsed": round(elapsed, 3), "requests": requests,
            "verdicts": [verdict.as_dict() for verdict in verdicts], "decision": decision.action, "reason": decision.reason,
            "window_start": _traffic_dict(self._window_start or RouteTraffic()),
        }

    def _view(self, detail: dict[str, Any]) -> None:
        if self.on_view is not None:
            self.on_view(detail)


def _emit(plan: Plan, event: dict[str, Any]) -> None:
    """An event as one JSON line to the plan's events file ('-': stdout) and on `notify`'s stdin."""
    line = json.dumps(event, default=str, sort_keys=True)
    target = plan.events.file
    if target and target != "-":  # '-' is the CLI's to print (library code never prints)
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as stream:
            stream.write(line + "\n")
    if plan.events.notify:
        try:
            subprocess.run(["/bin/sh", "-c", plan.events.notify], input=line + "\n", text=True, timeout=10,
                           capture_output=True, check=False)
        except (OSError, subprocess.SubprocessError):
            pass  # a notify hook that fails never stops the run; the journal has the event
