"""The migration procedure: a plan file, gates, a journal and a runner that moves a route's
traffic to the new service step by step, reversibly (`strangler cutover`).

- `cutover.plan`: the plan model and `load_plan`.
- `cutover.gates`: pure verdicts over readings (pass / fail / inconclusive) and `decide`.
- `cutover.readings`: the sources: the façade's admin API, the shadow store, CDC status, verify.
- `cutover.journal`: the journal and the lease in PostgreSQL; `cutover.state` folds it.
- `cutover.runner`: the one loop for run and dry run; `cutover.control`: the operator's functions.
- `cutover.rehearsal`: `rehearse`, the whole plan on a scratch stack (`strangler rehearse`), with
  its database copy, replay and report (`rehearsal_copy`, `rehearsal_replay`, `rehearsal_report`).

It talks to the façade only through its admin API and the routing file; it imports `common`,
`facade` and `cdc`, never `scripts`. The names below load on first use (`common.lazy`), so
`import cutover.exceptions` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.lazy import exports

if TYPE_CHECKING:
    from cutover.control import overview, request, run, status
    from cutover.exceptions import CutoverError, LeaseHeld, PlanError, SourceUnreachable
    from cutover.gates import Decision, Readings, Verdict, decide, evaluate
    from cutover.plan import Plan, json_schema, load_plan
    from cutover.rehearsal import RehearsalOptions, rehearse
    from cutover.runner import Action, RunResult, Runner

__getattr__, __dir__ = exports(__name__, {
    "cutover.control": "overview request run status",
    "cutover.exceptions": "CutoverError LeaseHeld PlanError SourceUnreachable",
    "cutover.gates": "Decision Readings Verdict decide evaluate",
    "cutover.plan": "Plan json_schema load_plan",
    "cutover.rehearsal": "RehearsalOptions rehearse",
    "cutover.runner": "Action RunResult Runner",
})

__all__ = [
    "Action",
    "CutoverError",
    "Decision",
    "LeaseHeld",
    "Plan",
    "PlanError",
    "Readings",
    "RehearsalOptions",
    "RunResult",
    "Runner",
    "SourceUnreachable",
    "Verdict",
    "decide",
    "evaluate",
    "json_schema",
    "load_plan",
    "overview",
    "rehearse",
    "request",
    "run",
    "status",
]
