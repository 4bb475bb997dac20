"""The cutover plan file (`extracted/catalog/cutover.yaml`): a typed, immutable model and its loader.

A plan names the routing file and the read route(s) to move to a target upstream, the façade
replicas that must all serve each change, the steps (`shadow`, weights in percent, `approve`),
the soak of each step, the gates and what a failed or inconclusive gate does, the journal's
database and where events go. `writes:` describes the write switch of the next part (routes,
budget, column ownership); it is validated now and used by `strangler cutover writes`.
`rehearsal:` names the commands `strangler rehearse` starts the two applications with.

`load_plan(path)` is the one way in: located parse, `${VAR:-default}` interpolation, model
validation, then the cross-checks against the routing file (the route exists, the target is one
of its upstreams). Every problem is a `file:line:col: message`; `PlanError` carries them all.
Relative paths in the plan are relative to the plan file.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from common.yamlfile import Found, Loc, Problem, check_model, interpolate
from cutover.exceptions import PlanError
from facade.config import ConfigError, Duration, FacadeConfig, Percent, load_config
from facade.exceptions import FacadeError

__all__ = [
    "CdcGate",
    "ColumnOwnership",
    "CommandGate",
    "ErrorRateGate",
    "EventsSpec",
    "FacadeSpec",
    "Gates",
    "JournalSpec",
    "LatencyGate",
    "OnInconclusive",
    "Plan",
    "RehearsalApp",
    "RehearsalSpec",
    "ShadowGate",
    "Soak",
    "Step",
    "VerifyGate",
    "WritesSpec",
    "json_schema",
    "load_plan",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Soak(_Model):
    """How long a step must hold before its gates may pass: both a time and a request count."""

    min_time: Duration = Field(default=300.0, description="Least time in the step before it may pass (e.g. 5m).")
    min_requests: int = Field(default=100, ge=0, description="Least requests seen on the route(s) in the step.")


def _step_from_scalar(value: object) -> object:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return {"kind": "weight", "weight": value}
    if value in ("shadow", "approve"):
        return {"kind": value}
    if isinstance(value, dict) and "kind" not in value:
        if "weight" in value:
            return {"kind": "weight", **value}
        for kind in ("shadow", "approve"):
            if value.get(kind) is True or kind in value:
                return {"kind": kind, **{key: item for key, item in value.items() if key != kind}}
    if isinstance(value, str):
        raise ValueError(f"step {value!r} is not a weight in percent, 'shadow' or 'approve'")
    return value


class Step(_Model):
    """One step: `shadow` (mirror to the target at 100% sample, weight 0), a weight, or `approve`."""

    kind: Literal["shadow", "weight", "approve"]
    weight: float | None = Field(default=None, gt=0, le=100, description="Percent to the target upstream.")
    soak: Soak | None = Field(default=None, description="This step's soak instead of the plan's.")

    @model_validator(mode="after")
    def _weight_only_for_weights(self) -> Step:
        if self.kind == "weight" and self.weight is None:
            raise ValueError("a weight step needs `weight:` in percent, e.g. {weight: 25}")
        if self.kind != "weight" and self.weight is not None:
            raise ValueError(f"a {self.kind} step takes no weight; write the weight as a step of its own")
        return self

    def label(self) -> str:
        return f"{self.weight:g}%" if self.kind == "weight" and self.weight is not None else self.kind


_STEP_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "description": "Percent to the target upstream."},
        {"enum": ["shadow", "approve"]},
        {
            "type": "object",
            "properties": {
                "kind": {"enum": ["shadow", "weight", "approve"]},
                "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                "soak": {"type": "object", "properties": {"min_time": {}, "min_requests": {"type": "integer", "minimum": 0}},
                         "additionalProperties": False},
            },
            "additionalProperties": False,
        },
    ],
    "description": "shadow, approve, a weight in percent, or {weight: 25, soak: {min_time: 10m}}.",
}

StepItem = Annotated[Step, BeforeValidator(_step_from_scalar), WithJsonSchema(_STEP_SCHEMA)]


class ShadowGate(_Model):
    """Shadow comparisons of the step's window, noise removed: mismatches over compared."""

    max_mismatch: Percent = Field(default=1.0, description="Most mismatching comparisons, in percent.")
    min_compared: int = Field(default=50, ge=1, description="Fewer comparisons than this is inconclusive.")


class ErrorRateGate(_Model):
    """The target's 5xx rate on the route against the old upstream's, in the step's window."""

    max_increase: Percent = Field(default=1.0, description="Percentage points the target may exceed the old upstream by.")
    min_requests: int = Field(default=50, ge=1, description="Fewer target requests than this is inconclusive.")


class LatencyGate(_Model):
    """The target's p99 latency on the route over the old upstream's (façade histograms)."""

    max_p99_ratio: float = Field(default=1.5, gt=0, description="Most the target's p99 may be, as a multiple of the old's.")
    min_requests: int = Field(default=50, ge=1, description="Fewer target requests than this is inconclusive.")


class CdcGate(_Model):
    """The sync's health from `cdc status`: lag and dead letters."""

    max_lag: Duration = Field(default=5.0, description="Most lag in seconds (e.g. 5s).")
    max_dead_letters: int = Field(default=0, ge=0)


class VerifyGate(_Model):
    """The row-by-row verify is clean: the last result when younger than `max_age`, else run now."""

    max_age: Duration = Field(default=600.0, description="A clean verify at most this old counts (e.g. 10m).")
    wait: Duration = Field(default=30.0, description="How long verify waits for the applier to catch up.")


class CommandGate(_Model):
    """A team's own check: exit 0 passes, 1 fails, anything else is inconclusive."""

    run: str = Field(description="A shell command; CUTOVER_PLAN, CUTOVER_STEP and CUTOVER_WEIGHT are set.")
    timeout: Duration = 60.0


class Gates(_Model):
    """The gates read during every soak; each one left out is not read."""

    shadow_mismatch: ShadowGate | None = None
    error_rate: ErrorRateGate | None = None
    latency: LatencyGate | None = None
    cdc: CdcGate | None = None
    verify: VerifyGate | None = None
    command: CommandGate | None = None

    def names(self) -> list[str]:
        return [name for name in type(self).model_fields if getattr(self, name) is not None]


class OnInconclusive(_Model):
    """An inconclusive reading keeps the step soaking up to `max_soak`, then `then` happens."""

    max_soak: Duration = Field(default=1800.0, description="Longest time in one step while the gates are inconclusive.")
    then: Literal["pause", "fail"] = Field(default="pause", description="pause: wait for a person; fail: as a failed gate.")


class FacadeSpec(_Model):
    """The façade replicas the route lives on: each must serve a change before the soak starts."""

    replicas: tuple[str, ...] = Field(min_length=1, description="Base URLs of the replicas (the admin API is under /_strangler/).")
    token_env: str | None = Field(default="STRANGLER_ADMIN_TOKEN", description="Variable holding the admin bearer token.")
    reload: Literal["watch", "api"] = Field(
        default="watch", description="watch: the replicas reload the file themselves; api: POST /_strangler/reload to each."
    )
    reload_timeout: Duration = Field(default=30.0, description="How long every replica has to report the new version.")
    timeout: Duration = Field(default=5.0, description="Timeout of one admin request.")


class JournalSpec(_Model):
    """Where decisions are written before they are acted on (PostgreSQL)."""

    database_url: str | None = Field(default=None, description="Default: the sync spec's target database.")
    lease: Duration = Field(default=30.0, description="A runner that stops renewing its lease loses it after this.")


class EventsSpec(_Model):
    """Every transition is a JSON line: to `file` ('-' for stdout) and on the stdin of `notify`."""

    file: str | None = None
    notify: str | None = Field(default=None, description="A shell command run per event with the JSON line on stdin.")
    metrics_file: str | None = Field(
        default=None, description="The runner's state as Prometheus gauges, rewritten on every event (textfile collector)."
    )


class ColumnOwnership(_Model):
    """After the write switch: which columns of a moved table the service writes, which stay legacy."""

    service: tuple[str, ...] = ()
    legacy: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _disjoint(self) -> ColumnOwnership:
        both = sorted(set(self.service) & set(self.legacy))
        if both:
            raise ValueError(f"columns {', '.join(both)} are owned by both sides; give each column to one side")
        return self


class WritesSpec(_Model):
    """The write switch (strangler cutover writes): routes, the pause budget, column ownership."""

    routes: tuple[str, ...] = Field(min_length=1, description="Write routes switched to the target.")
    budget: Duration = Field(default=1.0, description="Longest a write may be held during the switch.")
    reverse_sync: str | None = Field(default=None, description="Sync spec of the reverse stream (service → legacy).")
    ownership: dict[str, ColumnOwnership] = Field(default_factory=dict, description="Per moved table (schema.table).")


# --------------------------------------------------------------------------------------------
# Rehearsal (`strangler rehearse`): how the scratch stack starts the two applications


class RehearsalApp(_Model):
    """An application the rehearsal starts on its scratch stack, from commands with placeholders.

    Placeholders: `{port}` (a free loopback port), `{database_url}` (the application's scratch
    database), `{legacy_url}` (the scratch legacy application's base URL), `{legacy_database_url}`,
    `{service_database_url}` and `{python}` (this interpreter; a leading `python` means it too).
    """

    serve: str = Field(min_length=1, description="Serves the application on {port}, e.g. python -m monolith serve --port {port}.")
    migrate: str | None = Field(default=None, description="Run once before serve, e.g. the store's migrations.")
    health: str = Field(default="/healthz", pattern=r"^/", description="Answers below 500 once the application is up.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment of both commands (placeholders too).")
    start_timeout: Duration = Field(default=30.0, description="How long `health` may take to answer.")


class RehearsalSpec(_Model):
    """`strangler rehearse PLAN --traffic FILE`: the old upstream's application (`legacy`) and the target's (`service`)."""

    legacy: RehearsalApp = Field(description="The application behind the routes' old upstream, on a copy of the legacy database.")
    service: RehearsalApp = Field(description="The application behind the target, on a scratch store filled by the plan's sync.")
    sample: int = Field(default=1000, ge=1, description="Rows per table copied from the legacy database (--sample N, --all).")
    max_rate: float = Field(default=200.0, gt=0, description="Most requests per second the replay sends.")


class Plan(_Model):
    """A whole cutover plan."""

    version: Literal[1] = 1
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="Names the plan in the journal.")
    routing: str = Field(description="The routing file the façade replicas serve (relative to the plan).")
    routes: tuple[str, ...] = Field(min_length=1, description="The read route(s) to move.")
    target: str = Field(description="The upstream the routes move to.")
    sync: str | None = Field(default=None, description="The sync spec feeding the target's store.")
    facade: FacadeSpec
    steps: tuple[StepItem, ...] = Field(min_length=1, description="e.g. [shadow, 1, 5, 25, 50, 100]")
    soak: Soak = Soak()
    gates: Gates = Gates()
    interval: Duration = Field(default=5.0, description="How often the gates are read while a step soaks.")
    on_fail: Literal["last_passed", "zero"] = "last_passed"
    on_inconclusive: OnInconclusive = OnInconclusive()
    journal: JournalSpec = JournalSpec()
    events: EventsSpec = EventsSpec()
    postpone_file: str | None = Field(default=None, description="While this file exists no step advances (nothing rolls back).")
    writes: WritesSpec | None = None
    rehearsal: RehearsalSpec | None = Field(default=None, description="How `strangler rehearse` starts the applications.")

    @model_validator(mode="after")
    def _lease_outlives_a_turn(self) -> Plan:
        if self.journal.lease < 2 * self.interval:
            raise ValueError(
                f"journal.lease {self.journal.lease:g}s is shorter than two gate intervals ({self.interval:g}s each); "
                "a soaking runner would lose its lease: raise journal.lease or lower interval"
            )
        return self

    @model_validator(mode="after")
    def _steps_in_order(self) -> Plan:
        last = 0.0
        for index, step in enumerate(self.steps):
            if step.kind == "shadow" and last > 0:
                raise ValueError(f"steps[{index}]: `shadow` comes before the first weight (it runs at weight 0)")
            if step.kind == "weight" and step.weight is not None:
                if step.weight <= last:
                    raise ValueError(
                        f"steps[{index}]: weight {step.weight:g} does not rise above {last:g}; weights go up step by step "
                        "(a rollback is the runner's job)"
                    )
                last = step.weight
        return self

    def soak_of(self, step: Step) -> Soak:
        return step.soak or self.soak

    def weights(self) -> list[tuple[int, float]]:
        return [(index, step.weight) for index, step in enumerate(self.steps) if step.weight is not None]


# --------------------------------------------------------------------------------------------
# Loading (through the shared loader, common.yamlfile)


def _interpolate(data: dict[str, Any], env: Mapping[str, str]) -> list[Found]:
    """`${VAR:-default}` in every string of the plan (URLs and the journal's database come from the environment)."""
    found: list[Found] = []

    def walk(node: Any, loc: Loc) -> Any:
        if isinstance(node, dict):
            for key in list(node):
                node[key] = walk(node[key], (*loc, key))
        elif isinstance(node, list):
            for index, item in enumerate(node):
                node[index] = walk(item, (*loc, index))
        elif isinstance(node, str):
            try:
                return interpolate(node, env)
            except ValueError as exc:
                found.append(Found(loc, False, str(exc)))
        return node

    walk(data, ())
    return found


def _relative(plan: Plan, base: Path) -> Plan:
    def resolve(value: str | None) -> str | None:
        if value is None or value == "-":
            return value
        return str((base / value).resolve()) if not os.path.isabs(value) else value

    updates: dict[str, Any] = {"routing": resolve(plan.routing), "sync": resolve(plan.sync), "postpone_file": resolve(plan.postpone_file)}
    if plan.events.file is not None or plan.events.metrics_file is not None:
        updates["events"] = plan.events.model_copy(update={"file": resolve(plan.events.file), "metrics_file": resolve(plan.events.metrics_file)})
    if plan.writes is not None and plan.writes.reverse_sync is not None:
        updates["writes"] = plan.writes.model_copy(update={"reverse_sync": resolve(plan.writes.reverse_sync)})
    return plan.model_copy(update=updates)


def _cross(base: Path, env: Mapping[str, str] | None) -> Callable[[Mapping[str, Any]], list[Found]]:
    """The checks against the routing file: the routes exist and send to the target and one old upstream."""

    def check(data: Mapping[str, Any]) -> list[Found]:
        routing_path, routes, target = data.get("routing"), data.get("routes"), data.get("target")
        if not isinstance(routing_path, str) or not isinstance(routes, list) or not isinstance(target, str):
            return []
        path = base / routing_path
        try:
            routing = load_config(path, env=env)
        except ConfigError as exc:
            return [Found(("routing",), False, f"the routing file does not load: {exc.problems[0]}; run `strangler routes check {path}`")]
        except FacadeError as exc:
            return [Found(("routing",), False, str(exc))]
        return _route_problems(str(path), [str(item) for item in routes], target, routing)

    return check


def _route_problems(file: str, routes: list[str], target: str, routing: FacadeConfig) -> list[Found]:
    found: list[Found] = []
    ids = [route.id for route in routing.routes]
    if target not in routing.upstreams:
        found.append(Found(("target",), False, f"{target!r} is not a declared upstream of {file}; declared: {', '.join(routing.upstreams)}"))
        return found
    for index, route_id in enumerate(routes):
        route = next((item for item in routing.routes if item.id == route_id), None)
        if route is None:
            close = difflib.get_close_matches(route_id, ids, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            found.append(Found(("routes", index), False, f"route {route_id!r} is not in {file}; {hint}routes there: {', '.join(ids) or '(none)'}"))
        elif target not in route.to:
            found.append(Found(("target",), False, (
                f"route {route_id!r} sends to {', '.join(route.to)}, not to {target!r}; add `{target}: 0` to its `to:` in {file}")))
        elif len(route.to) != 2:
            found.append(Found(("routes", index), False, (
                f"route {route_id!r} sends to {len(route.to)} upstreams ({', '.join(route.to)}); the cutover moves a route "
                f"with two, the old one and {target!r}")))
    return found


def check_plan(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> tuple[Plan | None, list[Problem]]:
    """The validated plan (paths made absolute) and every problem, each `file:line:col: message`."""
    base = Path(path).resolve().parent
    plan, problems = check_model(
        path, Plan, env=env, prepare=_interpolate, cross=_cross(base, env),
        hints=_HINTS, not_mapping="a plan is a mapping with name:, routing:, routes:, target:, facade: and steps:.",
    )
    return (_relative(plan, base) if plan is not None else None), problems


_HINTS = {
    "replicas": "list the façade replicas' base URLs, e.g. replicas: [http://127.0.0.1:8000]",
    "steps": "e.g. steps: [shadow, 1, 5, 25, 50, 100]",
    "routing": "name the routing file the façade serves, e.g. routing: ../../routing.yaml",
}


def load_plan(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Plan:
    """The validated plan, or `PlanError` (a `common.yamlfile.FileError`) with every problem."""
    plan, problems = check_plan(path, env=env)
    if plan is None:
        raise PlanError(problems)
    return plan


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a plan file, for editors (`strangler cutover schema` writes it)."""
    schema = Plan.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "cutover.schema.json", **schema}
