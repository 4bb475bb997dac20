"""The operator's functions behind `strangler cutover ...`: plain functions over a loaded plan.

`overview` (the plan, each step's routing change, the gates' current readings), `run`, `status`
(the journal only), and the requests `pause`, `resume`, `approve`, `abort`, `rollback`, which
are journal entries a runner acts on; `abort` and `rollback` act at once when no runner holds
the lease.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from common.waiting import TimedOut, wait_until
from cutover.exceptions import CutoverError, LeaseHeld
from cutover.gates import RouteTraffic, evaluate
from cutover.journal import MemoryJournal, PostgresJournal, new_holder
from cutover.plan import Plan
from cutover.readings import Sources
from cutover.runner import DryExecutor, LiveExecutor, Runner, RunResult, file_hash, route_state
from cutover.state import REQUESTS, fold
from facade.diff import weight_changes
from facade.edit import shift_weights

__all__ = ["journal_url", "open_journal", "overview", "request", "run", "status"]


def journal_url(plan: Plan, env: Mapping[str, str] | None = None) -> str:
    """The journal's database: `journal.database_url`, else the sync spec's target database."""
    if plan.journal.database_url:
        return plan.journal.database_url
    if plan.sync:
        from cdc.exceptions import CDCError
        from cdc.spec import load_spec

        try:
            spec = load_spec(plan.sync, env=os.environ if env is None else env)
        except CDCError as exc:
            raise CutoverError(f"the plan's sync spec does not load: {exc}") from exc
        if spec.target_url:
            return spec.target_url
    raise CutoverError(
        "the plan names no journal database: set journal.database_url, or a sync spec (sync:) with a target database url"
    )


def open_journal(plan: Plan, env: Mapping[str, str] | None = None, *, create: bool = True) -> PostgresJournal:
    """The plan's journal; with `create=False` (dry run, status, plan) its tables are not created."""
    return PostgresJournal(journal_url(plan, env), plan.name, lease=plan.journal.lease, create=create)


def _old_upstream(plan: Plan, env: Mapping[str, str] | None) -> str:
    from facade.config import load_config

    route = next(item for item in load_config(plan.routing, env=env).routes if item.id == plan.routes[0])
    return next((name for name in route.to if name != plan.target), "")


def overview(plan: Plan, *, env: Mapping[str, str] | None = None, sources: Sources | None = None) -> dict[str, Any]:
    """The steps with each one's routing change, the gates and their current readings, the replicas."""
    env = os.environ if env is None else env
    sources = sources or Sources(plan, env=env)
    old = _old_upstream(plan, env)
    weight, shadow = route_state(plan, env)
    steps = []
    before = weight
    for index, step in enumerate(plan.steps):
        soak = plan.soak_of(step)
        if step.kind == "weight" and step.weight is not None:
            change = weight_changes({old: 100 - before, plan.target: before}, {old: 100 - step.weight, plan.target: step.weight})
            text = f"{', '.join(plan.routes)}: " + ", ".join(change) if change else "no change"
            before = step.weight
        elif step.kind == "shadow":
            text = f"{', '.join(plan.routes)}: shadow to {plan.target} {'off' if shadow is None else f'{shadow:g}%'} → 100% sample"
        else:
            text = f"wait for `strangler cutover approve {plan.name}`"
        steps.append({"index": index, "step": step.label(), "change": text, "soak": soak.model_dump()})
    first = next((s for s in plan.steps if s.weight is not None), None)
    diff = ""
    if first is not None:
        diff = shift_weights(plan.routing, plan.routes[0], {plan.target: first.weight or 0}, dry_run=True, env=env).diff
    unreachable: dict[str, str] = {}
    replicas: list[dict[str, Any]] = []
    try:
        replicas = [state.as_dict() for state in sources.replicas()]
    except CutoverError as exc:
        unreachable["facade"] = str(exc)
    readings, _ = sources.read(window_start=RouteTraffic(), run_start=RouteTraffic(), since=0.0, step="plan", weight=weight,
                               last_verify=None)
    unreachable.update(readings.unreadable)
    verdicts = evaluate(plan.gates, readings, target=plan.target, old=old)
    try:
        journal = open_journal(plan, env, create=False)
        journal.close()
    except CutoverError as exc:
        unreachable["journal"] = str(exc)
    return {
        "plan": plan.name, "routing": plan.routing, "routes": list(plan.routes), "target": plan.target, "old": old,
        "weight": weight, "shadow": shadow, "file_hash": file_hash(plan.routing), "steps": steps, "first_diff": diff,
        "gates": {name: getattr(plan.gates, name).model_dump() for name in plan.gates.names()},
        "verdicts": [verdict.as_dict() for verdict in verdicts], "replicas": replicas, "unreachable": unreachable,
        "on_fail": plan.on_fail, "on_inconclusive": plan.on_inconclusive.model_dump(),
    }


def run(
    plan: Plan,
    *,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
    exit_when_paused: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_view: Callable[[dict[str, Any]], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> RunResult:
    """Run the plan (or dry-run it: nothing changes, the actions it would take are returned)."""
    env = os.environ if env is None else env
    sources = Sources(plan, env=env)
    journal = open_journal(plan, env, create=not dry_run)
    try:
        if dry_run:
            memory = MemoryJournal(journal.entries())
            runner = Runner(plan, memory, DryExecutor(), sources, dry_run=True, env=env, on_event=on_event, on_view=on_view)
            return runner.run()
        journal.acquire(new_holder())
        try:
            def waiting(text: str) -> None:
                journal.renew_if_due()  # a replica slow to reload must not cost the lease
                if on_wait is not None:
                    on_wait(text)

            executor = LiveExecutor(plan, sources, env=env, on_wait=waiting)
            runner = Runner(plan, journal, executor, sources, env=env, exit_when_paused=exit_when_paused,
                            on_event=on_event, on_view=on_view)
            return runner.run()
        finally:
            journal.release()
    finally:
        journal.close()


def status(plan: Plan, *, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Where the run stands, from the journal alone (works from any machine that reaches its database)."""
    journal = open_journal(plan, env, create=False)
    try:
        entries = journal.entries()
        lease = journal.lease_holder()
    finally:
        journal.close()
    state = fold(entries)
    step = plan.steps[state.position].label() if 0 <= state.position < len(plan.steps) else None
    summary = []
    for entry in state.history:
        text = entry.detail.get("description") or entry.detail.get("reason") or entry.detail.get("decision") or ""
        if entry.kind == "decision":
            text = f"{entry.detail.get('label')}: {entry.detail.get('decision')} ({entry.detail.get('reason')})"
        summary.append({"id": entry.id, "at": entry.at, "kind": entry.kind, "step": entry.step, "text": text})
    return {
        "plan": plan.name, "status": state.status, "step": step, "position": state.position,
        "passed": plan.steps[state.passed].label() if 0 <= state.passed < len(plan.steps) else None,
        "weight": state.weight, "shadow": state.shadow, "since": state.step_since, "reason": state.reason,
        "file_hash": state.file_hash, "pending_intent": state.intent.detail.get("description") if state.intent else None,
        "last_reading": state.last_reading, "open_requests": [entry.kind.removeprefix("request.") for entry in state.requests],
        "lease": {"holder": lease[0], "expires_at": lease[1]} if lease else None, "entries": len(entries),
        "history": summary,
    }


def request(
    plan: Plan, kind: str, *, env: Mapping[str, str] | None = None, to: str | None = None, wait: float = 60.0,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Journal an operator request; `abort`/`rollback` run at once when no runner holds the lease."""
    if kind not in REQUESTS:
        raise CutoverError(f"unknown request {kind!r}; one of {', '.join(REQUESTS)}")
    detail: dict[str, Any] = {}
    if kind == "rollback":
        detail["to"] = _step_index(plan, to)
    journal = open_journal(plan, env)
    try:
        entry = journal.write(f"request.{kind}", detail=detail)
        if kind not in ("abort", "rollback"):
            return {"request": kind, "id": entry.id, "acted": False}
        try:
            journal.acquire(new_holder())
        except LeaseHeld:
            # A runner is at work: it acts on the request at its next turn.
            def handled() -> bool:
                return all(item.id != entry.id for item in fold(journal.entries()).requests)

            try:
                wait_until(handled, wait, 0.1, what=f"the running runner to {kind}")
            except TimedOut as exc:
                raise CutoverError(f"the runner holding the lease did not act on the {kind} within {wait:g}s; check it") from exc
            return {"request": kind, "id": entry.id, "acted": True, "by": "the running runner"}
        try:
            sources = Sources(plan, env=env)
            runner = Runner(plan, journal, LiveExecutor(plan, sources, env=env), sources, env=env, on_event=on_event)
            result = runner.run()
        finally:
            journal.release()
        return {"request": kind, "id": entry.id, "acted": True, "by": "this command", "result": result.as_dict()}
    finally:
        journal.close()


def _step_index(plan: Plan, label: str | None) -> int:
    """`--to` as a step: its label (`5`, `5%`, `shadow`), `0` or `start` for before the first step."""
    if label is None:
        raise CutoverError("rollback needs --to STEP: a weight of the plan's steps (e.g. 5), shadow, or 0")
    text = label.strip().rstrip("%")
    if text in ("0", "start", "zero"):
        return -1
    for index, step in enumerate(plan.steps):
        if step.label().rstrip("%") == text or (step.weight is not None and _same(text, step.weight)):
            return index
    labels = ", ".join(step.label() for step in plan.steps if step.kind != "approve")
    raise CutoverError(f"--to {label!r} is not a step of plan {plan.name!r}; steps: 0, {labels}")


def _same(text: str, weight: float) -> bool:
    try:
        return float(text) == weight
    except ValueError:
        return False
