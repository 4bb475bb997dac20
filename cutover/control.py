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
from cutover.journal import MemoryJournal, journal_url, new_holder, open_journal
from cutover.plan import Plan
from cutover.readings import Sources
from cutover.runner import DryExecutor, LiveExecutor, Runner, RunResult, file_hash, route_state
from cutover.state import REQUESTS, fold
from cutover.writes import switch_writes, writes_state
from facade.diff import weight_changes
from facade.edit import shift_weights

__all__ = ["finish", "journal_url", "open_journal", "overview", "request", "run", "status", "switch_writes"]


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


def finish(plan: Plan, *, env: Mapping[str, str] | None = None, dry_run: bool = False) -> dict[str, Any]:
    """The last step: after the soak since the write switch, collapse the routes to the target, drop
    or keep the forward stream (legacy-owned columns left?) and say what still lives in the monolith."""
    from cutover.finish import finish_plan

    env = os.environ if env is None else env
    journal = open_journal(plan, env, create=not dry_run)
    try:
        if dry_run:
            return finish_plan(plan, MemoryJournal(journal.entries()), env=env, dry_run=True)
        journal.acquire(new_holder())
        try:
            return finish_plan(plan, journal, env=env)
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
        "history": summary, "writes": _writes_status(plan, entries, env),
    }


def _writes_status(plan: Plan, entries: list[Any], env: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The write switch's state from the journal, and the conflicts recorded on each side."""
    if plan.writes is None:
        return None
    state = writes_state(entries)
    unfinished = state["unfinished"]
    out: dict[str, Any] = {
        "writer": plan.target if state["writer"] == "target" else "old writer",
        "last": state["last"],
        "unfinished": None if unfinished is None else {
            "direction": unfinished["start"].get("direction"),
            "steps": [f"{step} {phase}" for step, phase, _ in unfinished["steps"] if phase in ("intent", "done")],
        },
        "conflicts": None,
    }
    import psycopg2

    from cdc import conflicts
    from cdc.exceptions import CDCError
    from cdc.spec import load_spec

    try:
        counts = {}
        for path, what in ((plan.sync, "forward"), (plan.writes.reverse_sync, "reverse")):
            if path is None:
                continue
            spec = load_spec(path, env=os.environ if env is None else env)
            conn = psycopg2.connect(spec.target_url)
            try:
                with conn.cursor() as cur:
                    counts[what] = {"count": conflicts.count(cur, spec.name),
                                    "recent": [c.describe() for c in conflicts.list_recent(cur, spec.name, 3)]}
            finally:
                conn.close()
        out["conflicts"] = counts
    except (CDCError, psycopg2.Error) as exc:  # status reads the journal; a database may be out of reach
        out["conflicts"] = {"error": str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}
    return out


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
