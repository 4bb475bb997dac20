"""The cutover plan file (`extracted/catalog/cutover.yaml`): a typed, immutable model and its loader.

A plan names the routing file and the read route(s) to move to a target upstream, the façade
replicas that must all serve each change, the steps (`shadow`, weights in percent, `approve`),
the soak of each step, the gates and what a failed or inconclusive gate does, the journal's
database and where events go. `writes:` describes the write switch of the next part (routes,
budget, column ownership); it is validated now and used by `strangler cutover writes`.

`load_plan(path)` is the one way in: located parse, `${VAR:-default}` interpolation, model
validation, then the cross-checks against the routing file (the route exists, the target is one
of its upstreams). Every problem is a `file:line:col: message`; `PlanError` carries them all.
Relative paths in the plan are relative to the plan file.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from cutover.exceptions import PlanError
from facade.config import ConfigError, Duration, FacadeConfig, Percent, interpolate, load_config
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


StepItem = Annotated[Step, BeforeValidator(_step_from_scalar)]


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
# Loading (a located parse, to move onto the shared loader `common.yamlfile`)

Loc = tuple[Any, ...]


def _locate(root: Any, loc: Loc, on_key: bool = False) -> tuple[int, int]:
    node, line, column = root, 0, 0
    for depth, part in enumerate(loc):
        last = depth == len(loc) - 1
        if isinstance(node, CommentedMap) and part in node:
            line, column = node.lc.key(part) if (on_key and last) else node.lc.value(part)
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line, column = node.lc.item(part)
            node = node[part]
        else:
            break
    return line + 1, column + 1


def _plain(node: Any, env: Mapping[str, str], loc: Loc, problems: list[tuple[Loc, str]]) -> Any:
    if isinstance(node, dict):
        return {str(key): _plain(value, env, (*loc, key), problems) for key, value in node.items()}
    if isinstance(node, list):
        return [_plain(item, env, (*loc, index), problems) for index, item in enumerate(node)]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        try:
            return interpolate(str(node), env)
        except ValueError as exc:
            problems.append((loc, str(exc)))
            return str(node)
    return node


def _message(error: Any) -> tuple[Loc, bool, str]:
    loc: Loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and ("function-" in part or part == "Step")))
    where = ".".join(str(part) if not isinstance(part, int) else f"[{part}]" for part in loc).replace(".[", "[")
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return loc[:-1], True, f"{'.'.join(map(str, loc[:-1])) or 'the plan'} is missing {loc[-1]!r}"
    if error["type"] == "extra_forbidden":
        parent = loc[:-1]
        fields = _fields_at(parent)
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return loc, True, f"unknown key {loc[-1]!r}{hint}; allowed here: {', '.join(fields)}"
    got = error.get("input")
    shown = f"; got {got!r}" if not isinstance(got, dict | list) and error["type"] != "value_error" else ""
    return loc, False, f"{where + ': ' if where else ''}{message[0].lower() + message[1:]}{shown}"


def _fields_at(loc: Loc) -> list[str]:
    model: Any = Plan
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        info = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        model = None
        if info is not None:
            for candidate in _models_in(info.annotation):
                model = candidate
    return list(model.model_fields) if model is not None else []


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found.extend(_models_in(arg))
    for arg in getattr(annotation, "__metadata__", ()) or ():
        found.extend(_models_in(arg))
    if hasattr(annotation, "__origin__") and not found:
        found.extend(_models_in(annotation.__origin__))
    return found


def _relative(plan: Plan, base: Path) -> Plan:
    def resolve(value: str | None) -> str | None:
        if value is None or value == "-":
            return value
        return str((base / value).resolve()) if not os.path.isabs(value) else value

    updates: dict[str, Any] = {"routing": resolve(plan.routing), "sync": resolve(plan.sync), "postpone_file": resolve(plan.postpone_file)}
    if plan.events.file is not None:
        updates["events"] = plan.events.model_copy(update={"file": resolve(plan.events.file)})
    if plan.writes is not None and plan.writes.reverse_sync is not None:
        updates["writes"] = plan.writes.model_copy(update={"reverse_sync": resolve(plan.writes.reverse_sync)})
    return plan.model_copy(update=updates)


def _cross_problems(plan: Plan, routing: FacadeConfig) -> list[tuple[Loc, bool, str]]:
    problems: list[tuple[Loc, bool, str]] = []
    ids = [route.id for route in routing.routes]
    for index, route_id in enumerate(plan.routes):
        route = next((item for item in routing.routes if item.id == route_id), None)
        if route is None:
            close = difflib.get_close_matches(route_id, ids, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                ((("routes", index)), False, f"route {route_id!r} is not in {plan.routing}; {hint}routes there: {', '.join(ids) or '(none)'}")
            )
            continue
        if plan.target not in route.to:
            problems.append(
                (("target",), False,
                 f"route {route_id!r} sends to {', '.join(route.to)}, not to {plan.target!r}; add `{plan.target}: 0` to its `to:` "
                 f"in {plan.routing} or name one of those")
            )
        elif len(route.to) != 2:
            problems.append(
                (("routes", index), False,
                 f"route {route_id!r} sends to {len(route.to)} upstreams ({', '.join(route.to)}); the cutover moves a route "
                 f"with two, the old one and {plan.target!r}")
            )
    if plan.target not in routing.upstreams:
        problems.append((("target",), False, f"{plan.target!r} is not a declared upstream of {plan.routing}; declared: {', '.join(routing.upstreams)}"))
    return problems


def check_plan(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> tuple[Plan | None, list[str]]:
    """The validated plan (paths made absolute) and every problem, each `file:line:col: message`."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{file}:1:1: cannot read the plan ({getattr(exc, 'strerror', None) or exc}); check the path"]
    try:
        root = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [f"{file}:{line}:{column}: this is not valid YAML ({exc.problem}); fix the syntax here"]
    except YAMLError as exc:
        return None, [f"{file}:1:1: this is not valid YAML ({exc}); fix the syntax"]
    if not isinstance(root, dict):
        return None, [f"{file}:1:1: a plan is a mapping with routing:, routes:, target:, facade: and steps:"]
    found: list[tuple[Loc, str]] = []
    data = _plain(root, os.environ if env is None else env, (), found)
    located: list[tuple[Loc, bool, str]] = [(loc, False, message) for loc, message in found]
    plan: Plan | None = None
    try:
        plan = _relative(Plan.model_validate(data), Path(file).resolve().parent)
    except ValidationError as exc:
        located.extend(_message(error) for error in exc.errors(include_url=False))
    if plan is not None and not located:
        try:
            routing = load_config(plan.routing, env=env)
        except ConfigError as exc:
            located.append((("routing",), False, f"the routing file does not load: {exc.problems[0]}; run `strangler routes check {plan.routing}`"))
        except FacadeError as exc:
            located.append((("routing",), False, f"{exc}"))
        else:
            located.extend(_cross_problems(plan, routing))
    problems = []
    for loc, on_key, message in located:
        line, column = _locate(root, loc, on_key)
        problem = f"{file}:{line}:{column}: {message}"
        if problem not in problems:
            problems.append(problem)
    return (plan if not problems else None), problems


def load_plan(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Plan:
    """The validated plan, or `PlanError` with every problem."""
    plan, problems = check_plan(path, env=env)
    if plan is None:
        raise PlanError(problems)
    return plan


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a plan file, for editors (`strangler cutover schema` writes it)."""
    schema = Plan.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "cutover.schema.json", **schema}
