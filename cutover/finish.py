"""`strangler cutover finish PLAN`: the strangler's last step for one capability (decommission).

Once the writes have stayed on the target for the plan's soak (`soak.min_time` since the last
forward write switch) and both directions verify clean, it:

1. collapses the read and write routes to `to: <target>` (`facade.edit.collapse_route`);
2. narrows the forward stream: with ownership in force it carries only the legacy-owned columns
   (`writes.ownership.<table>.legacy`); when no table has any left, its slot and publication are
   dropped (`cdc.teardown.drop`), since nothing of the monolith's writes is needed any more;
3. says what of this capability still lives in the monolith: the legacy tables the reverse stream
   keeps feeding (the monolith still reads them), the columns the monolith still writes, and the
   routes and default that still go to the monolith.

Journaled as `writes.finished`; `--dry-run` says what it would do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cutover.exceptions import CutoverError
from cutover.journal import JournalStore
from cutover.plan import Plan
from cutover.writes import writes_state
from facade.config import ConfigError, load_config
from facade.edit import collapse_route
from facade.exceptions import FacadeError

__all__ = ["finish_plan"]


def finish_plan(plan: Plan, journal: JournalStore, *, env: Mapping[str, str] | None = None, dry_run: bool = False,
                clock: Any = None) -> dict[str, Any]:
    """Do (or with `dry_run` describe) the finish; raises `CutoverError` when it is too early."""
    import time

    from cdc.exceptions import CDCError
    from cdc.spec import load_spec
    from cdc.verify import verify

    env = dict(os.environ if env is None else env)
    now = (clock or time.time)()
    if plan.writes is None or plan.sync is None:
        raise CutoverError("finish needs a plan with writes: and sync:; it ends the write switch")
    state = writes_state(journal.entries())
    last = state["last"] or {}
    if last.get("outcome") == "finished":
        raise CutoverError(f"plan {plan.name!r} is already finished")
    if state["unfinished"] is not None:
        raise CutoverError("a write switch is unfinished; run strangler cutover writes PLAN to finish or undo it first")
    if state["writer"] != "target":
        raise CutoverError(f"the writes are not on {plan.target}; switch them first: strangler cutover writes PLAN")
    soaked = now - float(last.get("at", now))
    if soaked < plan.soak.min_time:
        raise CutoverError(f"the writes have been on {plan.target} for {soaked:.0f}s of the soak's {plan.soak.min_time:g}s; "
                           f"finish after {plan.soak.min_time - soaked:.0f}s more")
    try:
        forward = load_spec(plan.sync, env=env)
        reverse = load_spec(plan.writes.reverse_sync, env=env) if plan.writes.reverse_sync else None
    except CDCError as exc:
        raise CutoverError(f"a sync spec does not load: {exc}") from exc
    wait = plan.gates.verify.wait if plan.gates.verify is not None else 30.0
    verified: dict[str, Any] = {}
    for spec, what in ((forward, "forward"), (reverse, "reverse")):
        if spec is None:
            continue
        try:
            result = verify(spec, wait=wait)
        except CDCError as exc:
            raise CutoverError(f"verify {what}: {exc}") from exc
        verified[what] = result.identical
        if not result.identical:
            raise CutoverError(f"verify {what} is not clean; resolve the differences (strangler verify --spec {spec.path}) first")

    routes = list(dict.fromkeys([*plan.routes, *plan.writes.routes]))
    edits = []
    for route in routes:
        try:
            edits.append(collapse_route(plan.routing, route, plan.target, dry_run=dry_run, env=env).diff)
        except (ConfigError, FacadeError) as exc:
            raise CutoverError(f"cannot collapse route {route}: {exc}") from exc

    legacy_owned = {table: list(owned.legacy) for table, owned in plan.writes.ownership.items() if owned.legacy}
    spec_tables = {table.target for table in forward.tables} | {table.source for table in forward.tables}
    covered = all(any(name in (table.target, table.source) for name in plan.writes.ownership) for table in forward.tables)
    stream: dict[str, Any]
    if not legacy_owned and covered:
        if not dry_run:
            from cdc.teardown import drop

            try:
                dropped = drop(forward)
            except CDCError as exc:
                raise CutoverError(f"cannot drop the forward stream: {exc}") from exc
        else:
            dropped = {"slot_dropped": False, "publication_dropped": False}
        stream = {"forward": "dropped", "detail": "no legacy-owned columns remain: slot and publication dropped", **dropped}
    else:
        kept = ", ".join(f"{table} ({', '.join(cols)})" for table, cols in legacy_owned.items()) or "tables without ownership"
        stream = {"forward": "narrowed", "detail": f"the forward stream carries only legacy-owned columns: {kept}",
                  "tables": sorted(spec_tables)}

    config = load_config(plan.routing, env=env)
    still_monolith = [route.id for route in config.routes if route.id not in routes and any(
        name != plan.target and weight > 0 for name, weight in route.to.items())]
    left = {
        "tables_read_in_monolith": [table.target for table in reverse.tables] if reverse is not None else [],
        "columns_written_by_monolith": legacy_owned,
        "routes_still_on_monolith": still_monolith,
        "default": config.default.to,
    }
    outcome = {"routes": routes, "diffs": edits, "stream": stream, "verified": verified, "left_in_monolith": left,
               "dry_run": dry_run}
    if not dry_run:
        journal.write("writes.finished", detail={"routes": routes, "stream": stream["forward"], "left_in_monolith": left})
    return outcome
