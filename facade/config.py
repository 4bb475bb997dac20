"""The `routing.yaml` format: typed, immutable models and a loader that reports every problem.

`load_config(path)` reads the file with ruamel.yaml's round-trip loader (which keeps line and column
of every key and value), interpolates `${VAR:-default}` in upstream URLs and tokens, validates the
structure with the pydantic models below and then the cross-references between its parts
(upstream names, weights, duplicate ids, routes shadowed by earlier ones). Every problem found is
reported, each as `file:line:col: message` pointing at the offending key or value; `ConfigError`
carries them all. `check_file(path)` returns the same list without raising.

Durations are stored as float seconds and sizes as int bytes (see `facade.units`); lists are tuples.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from common import yamlfile
from common.yamlfile import FileError, Found, Loc, Problem, interpolate
from facade.exceptions import FacadeError
from facade.units import parse_duration, parse_size

__all__ = [
    "AdminConfig",
    "AssignmentConfig",
    "BreakerConfig",
    "CompareConfig",
    "ConfigError",
    "DefaultRoute",
    "FacadeConfig",
    "HoldConfig",
    "LimitsConfig",
    "MatchConfig",
    "NormalizeRule",
    "Problem",
    "RESERVED_PREFIX",
    "RecordConfig",
    "RedactConfig",
    "RetryConfig",
    "RouteConfig",
    "ShadowConfig",
    "ShadowStoreConfig",
    "ShadowWorkerConfig",
    "StickyConfig",
    "UpstreamConfig",
    "check_file",
    "check_text",
    "interpolate",
    "json_schema",
    "load_config",
    "parse_config",
    "parse_path_template",
    "template_covers",
]

# --------------------------------------------------------------------------------------------
# Value types


_DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)\s*$"},
    ],
    "description": "A duration: 250ms, 1s, 2m, 1h, 7d or a number of seconds.",
}
_SIZE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([bB]|[kKmMgG][iI]?[bB])\s*$"},
    ],
    "description": "A size: 64KB, 1MB or a number of bytes (1KB = 1024 bytes).",
}

Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]
"""Seconds; written `250ms`, `1s`, `2m` or a number of seconds."""
Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA)]
"""Bytes; written `64KB`, `1MB` or a number of bytes."""
Percent = Annotated[float, Field(ge=0, le=100)]


def _scalar_to_str(value: object) -> object:
    # `X-Version: 2` in YAML is an int; a condition on it means the text "2".
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


ConditionValue = Annotated[str, BeforeValidator(_scalar_to_str)]
_WEIGHTS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "description": "One upstream taking 100% of the traffic."},
        {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": 100},
            "description": "Weights in percent by upstream name, summing to 100; listed oldest first.",
        },
    ]
}


def _weights_from_scalar(value: object) -> object:
    if isinstance(value, str):
        return {value: 100}
    return value


Methods = Annotated[tuple[str, ...], BeforeValidator(lambda value: [value] if isinstance(value, str) else value)]
"""A list of HTTP methods; a single method may be written without brackets."""

Weights = Annotated[dict[str, float], BeforeValidator(_weights_from_scalar), WithJsonSchema(_WEIGHTS_SCHEMA)]

RESERVED_PREFIX = "/_strangler/"
"""Paths under this prefix are the façade's admin API; routes never see them."""

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ROUTE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_BAD_LITERAL = re.compile(r"[{}*?#\s]")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------
# Path templates (pure; the routing table compiles them into matchers)


def parse_path_template(template: str) -> tuple[str, ...]:
    """The segments of a path template, or `ValueError` saying what is wrong with it.

    A template starts with `/`; its segments are literals, `{name}` or `*` (exactly one non-empty
    segment), or `**` as the last segment (zero or more segments: `/api/**` matches `/api`,
    `/api/` and everything below, but not `/apix`). A trailing slash is significant:
    `/api/products/` matches only with the slash. `/api/products` parses to `("api", "products")`.
    """
    if not isinstance(template, str) or not template.startswith("/"):
        raise ValueError(f"path template {template!r} must start with '/', e.g. /api/products/{{id}}")
    segments = tuple(template.split("/")[1:])
    names: set[str] = set()
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            if not last:
                raise ValueError(f"path template {template!r}: '**' matches the rest of the path, so it must be the last segment")
        elif segment == "*":
            continue
        elif segment.startswith("{") or segment.endswith("}"):
            found = _PARAM.match(segment)
            if not found:
                raise ValueError(
                    f"path template {template!r}: {segment!r} is not a parameter; write a whole segment like {{id}}"
                )
            if found.group(1) in names:
                raise ValueError(f"path template {template!r} names the parameter {segment!r} twice; give each a distinct name")
            names.add(found.group(1))
        elif segment == "" and not last:
            raise ValueError(f"path template {template!r} has an empty segment ('//'); remove the extra slash")
        elif _BAD_LITERAL.search(segment):
            raise ValueError(
                f"path template {template!r}: segment {segment!r} may not contain '{{', '}}', '*', '?', '#' or spaces; "
                "use {name} for one segment or ** for the rest"
            )
    return segments


def _is_wildcard(segment: str) -> bool:
    return segment == "*" or segment.startswith("{")


def template_covers(first: tuple[str, ...], second: tuple[str, ...]) -> bool:
    """True when template `first` matches every path that template `second` matches (conservative)."""
    for index, segment in enumerate(first):
        if segment == "**":
            return True
        if index >= len(second):
            return False
        other = second[index]
        if other == "**":
            return False
        if _is_wildcard(segment):
            # A wildcard needs a non-empty segment; the other side's literal "" (trailing slash) is not one.
            if other == "":
                return False
            continue
        if _is_wildcard(other) or other != segment:
            return False
    return len(first) == len(second)


# --------------------------------------------------------------------------------------------
# Models


class AdminConfig(_Model):
    """Who may use the admin API under `/_strangler/`."""

    token_env: str | None = Field(
        default="STRANGLER_ADMIN_TOKEN",
        description="Environment variable holding the bearer token for /_strangler/ (required unless on loopback).",
    )
    token: str | None = Field(default=None, description="The token itself; ${VAR:-default} is interpolated.")


class AssignmentConfig(_Model):
    """How clients are assigned to upstreams when a route splits traffic."""

    cookie: str = Field(default="strangler_id", description="Cookie carrying the sticky id of anonymous clients.")
    cookie_max_age: Duration = Field(default=365 * 86400.0, description="Lifetime of that cookie.")
    override_header: str | None = Field(
        default="X-Strangler-Upstream",
        description="Header a tester sets to force one of the matched route's upstreams or its shadow target.",
    )
    override_token_env: str | None = Field(
        default=None,
        description="Environment variable holding a secret that, sent in X-Strangler-Token, allows the override header "
        "when the façade listens beyond loopback (the admin token always does).",
    )

    @field_validator("cookie", "override_header")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not _TOKEN.match(value):
            raise ValueError(f"{value!r} is not a valid header or cookie name; use letters, digits and '-' or '_'")
        return value


class BreakerConfig(_Model):
    """Circuit breaker per upstream: open after `failures` consecutive failures, probe after `reset_after`."""

    failures: int = Field(default=5, ge=1)
    reset_after: Duration = 10.0


class LimitsConfig(_Model):
    """Limits on the request head, checked as it arrives (defaults as nginx's
    `large_client_header_buffers 4 8k`): above them the façade answers 414 or 431 and closes."""

    header_line: Size = Field(default=8 * 1024, ge=256, description="Longest request line or single header line.")
    headers: Size = Field(default=32 * 1024, ge=256, description="Largest request head: request line and all headers.")

    @model_validator(mode="after")
    def _line_within_head(self) -> LimitsConfig:
        if self.header_line > self.headers:
            raise ValueError(
                f"limits.header_line ({self.header_line} bytes) is larger than limits.headers ({self.headers} bytes), "
                "which bounds the whole head; raise headers or lower header_line"
            )
        return self


class UpstreamConfig(_Model):
    """A named backend the façade forwards to. `name` is the key it is declared under."""

    name: str = Field(default="", description="Filled from the key under `upstreams:`.", json_schema_extra={"filled": True})
    url: str = Field(description="Base URL, http://host:port; ${VAR:-default} is interpolated.")
    connect_timeout: Duration = 1.0
    timeout: Duration = 30.0
    pool: int = Field(default=100, ge=1, description="Maximum connections kept to this upstream.")
    sandbox: bool = Field(default=False, description="A sandbox may receive mirrored writes.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", value):
            raise ValueError(f"{value!r} is not an upstream URL; write it like http://127.0.0.1:8001")
        return value.rstrip("/")


def _check_condition(kind: str, name: str, value: str) -> None:
    if value.startswith("~"):
        try:
            re.compile(value[1:])
        except re.error as exc:
            raise ValueError(f"{kind} condition {name!r}: {value!r} is not a valid regular expression ({exc})") from None


class MatchConfig(_Model):
    """Which requests a route takes. Every condition given must hold.

    Condition values are exact strings; a value starting with `~` is a regular expression that
    must match the whole value (`~v[12]`, `~.+` for "present"); `\\~` starts a literal `~`.
    Header names are case-insensitive. A query condition holds when any value of the key matches.
    """

    path: str = Field(default="/**", description="Path template: literals, {name} or * (one segment), ** (the rest).")
    methods: Methods | None = Field(default=None, description="Allowed methods; absent means all.")
    headers: dict[str, ConditionValue] = Field(default_factory=dict)
    cookies: dict[str, ConditionValue] = Field(default_factory=dict)
    query: dict[str, ConditionValue] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        parse_path_template(value)
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("an empty method list matches nothing; list methods like [GET, HEAD] or leave it out")
        upper = tuple(dict.fromkeys(method.upper() for method in value))
        for method in upper:
            if not re.match(r"^[A-Z]+$", method):
                raise ValueError(f"{method!r} is not an HTTP method; write e.g. GET, POST")
        return upper

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, condition in value.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a header name")
            _check_condition("header", name, condition)
        return {name.lower(): condition for name, condition in value.items()}

    @field_validator("cookies", "query")
    @classmethod
    def _conditions(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for name, condition in value.items():
            _check_condition(str(info.field_name).rstrip("s"), name, condition)
        return value


class StickyConfig(_Model):
    """Where a client's sticky key comes from: one of a header, a cookie, or the client address.

    Clients without that key are anonymous and get the assignment cookie. Written as
    `{cookie: sessionid}`, `{header: X-User-Id}` or `client`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=lambda schema: _allow_client_string(schema))

    header: str | None = None
    cookie: str | None = None
    client: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: object) -> object:
        if value == "client":
            return {"client": True}
        if isinstance(value, str):
            raise ValueError(f"sticky: {value!r} is not a key source; write {{cookie: <name>}}, {{header: <name>}} or client")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> StickyConfig:
        given = [name for name in ("header", "cookie") if getattr(self, name)] + (["client"] if self.client else [])
        if len(given) != 1:
            raise ValueError(
                "sticky needs exactly one key source: {cookie: <name>}, {header: <name>} or client"
                + (f"; got {', '.join(given)}" if given else "")
            )
        return self


def _allow_client_string(schema: dict[str, Any]) -> None:
    object_schema = {key: schema.pop(key) for key in list(schema) if key not in ("title", "description")}
    schema["anyOf"] = [object_schema, {"const": "client"}]


class RetryConfig(_Model):
    """Retries within the route's timeout.

    `attempts` is the total number of tries including the first (1 = never retry). Any method is
    retried when the request provably never reached the upstream; otherwise only idempotent ones,
    and only while the request body fits `replay_buffer`.
    """

    attempts: int = Field(default=2, ge=1, le=10)
    replay_buffer: Size = 64 * 1024


class NormalizeRule(_Model):
    """Rewrite a JSON value with a regular expression on both sides before comparing."""

    path: str
    regex: str
    replace: str = ""

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression ({exc})") from None
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _json_path(value)


def _json_path(value: str) -> str:
    if not value.startswith("$"):
        raise ValueError(f"{value!r} is not a JSON path; write it like $.results[*].updated_at")
    return value


JsonPath = Annotated[str, BeforeValidator(lambda value: _json_path(value) if isinstance(value, str) else value)]


class CompareConfig(_Model):
    """How a shadow response is compared with the primary one."""

    headers: tuple[str, ...] = Field(default=(), description="Response headers compared (besides the status and body).")
    ignore: tuple[JsonPath, ...] = Field(default=(), description="JSON paths never compared, e.g. $.results[*].updated_at.")
    normalize: tuple[NormalizeRule, ...] = ()
    tolerance: dict[str, float] = Field(default_factory=dict, description="JSON path → allowed absolute numeric difference.")
    unordered: tuple[JsonPath, ...] = Field(default=(), description="Arrays compared as multisets.")
    array_keys: dict[str, str] = Field(default_factory=dict, description="Array path → field that identifies its items.")
    relative_threshold: Percent = Field(
        default=20.0, description="A field is a real difference when its rate exceeds noise by this many percent ..."
    )
    absolute_threshold: Percent = Field(default=0.03, description="... and by this many percentage points.")

    @field_validator("tolerance", "array_keys")
    @classmethod
    def _paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path in value:
            _json_path(path)
        return value


class RedactConfig(_Model):
    """What never reaches the shadow store besides Authorization, Cookie and Set-Cookie."""

    headers: tuple[str, ...] = ()
    body_fields: tuple[str, ...] = ()


class RecordConfig(_Model):
    """Record a sample of requests with their primary responses for offline replay."""

    sample: Percent
    file: str


class ShadowConfig(_Model):
    """Mirror a sample of a route's requests to a candidate upstream and compare the answers."""

    to: str = Field(description="Candidate upstream receiving the mirrored requests.")
    sample: Percent = Field(default=100.0, description="Percent of requests mirrored (by sticky key).")
    methods: Methods = ("GET", "HEAD", "OPTIONS")
    allow_writes: bool = Field(default=False, description="Mirror write methods even to a non-sandbox upstream.")
    max_body: Size = Field(default=1024 * 1024, description="Request bodies larger than this are not mirrored.")
    queue: int = Field(default=1000, ge=1)
    inflight: int = Field(default=50, ge=1)
    timeout: Duration = 5.0
    noise_sample: Percent = Field(default=10.0, description="Percent of safe requests sent to the primary twice.")
    compare: CompareConfig = CompareConfig()
    redact: RedactConfig = RedactConfig()
    record: RecordConfig | None = None

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(method.upper() for method in value))


class ShadowStoreConfig(_Model):
    """Where comparisons are kept (SQLAlchemy URL), and for how long."""

    url: str = "sqlite:///.strangler/shadow.db"
    retention: Duration = 7 * 86400.0
    max_rows: int = Field(default=100_000, ge=1)
    max_size: Size | None = Field(
        default=None, description="Oldest comparisons are deleted while the store holds more than this (e.g. 500MB); a SQLite file shrinks to match."
    )
    max_body: Size = Field(default=64 * 1024, description="Sample bodies are truncated to this size.")


class ShadowWorkerConfig(_Model):
    """The shadow worker process all shadowed routes share (read when the façade starts)."""

    cpu: Percent = Field(
        default=5.0,
        ge=1,
        description=(
            "Percent of one CPU core the worker may use (at least 1). Beyond it, sampled requests are dropped and "
            "counted as `cpu_budget` until the worker is back within budget, so shadowing never takes "
            "the CPU the primary traffic needs."
        ),
    )


_HOLD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")


class HoldConfig(_Model):
    """A write hold on the route: new requests wait (body unread) instead of being sent, and go to
    the upstream the table names when the hold is cleared. `until` is a lease (unix time): past
    it every worker releases by itself. A request held longer than `budget` gets a 503."""

    id: str = Field(description="Names the hold; the same id on several routes is one hold (GET /_strangler/hold).")
    until: float = Field(gt=0, description="Lease end, unix time in seconds: past it the hold releases by itself.")
    budget: Duration = Field(default=2.0, description="Longest a request waits before it gets 503 with Retry-After.")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _HOLD_ID.match(value):
            raise ValueError(f"hold id {value!r} must be letters, digits, '-', '_', '.' or ':', e.g. writes-1")
        return value

    @field_validator("until", mode="before")
    @classmethod
    def _until(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"hold until {value!r} is not a unix time; write the lease end in seconds, e.g. 1767225600.5")
        return value

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("a hold budget of 0 answers every request with 503; give it a duration, e.g. 2s")
        return value


class RouteConfig(_Model):
    """One entry of `routes:`: which requests (match), where to (weighted upstreams), how."""

    id: str = Field(description="Unique name, used in metrics, logs and `routes shift`.")
    match: MatchConfig = MatchConfig()
    to: Weights = Field(description="Weights in percent by upstream, summing to 100, listed oldest first.")
    sticky: StickyConfig | None = None
    timeout: Duration | None = Field(default=None, description="Whole budget, retries included; default the upstream's.")
    retries: RetryConfig = RetryConfig()
    fallback: str | None = Field(default=None, description="Upstream for safe requests when the chosen one fails.")
    shadow: ShadowConfig | None = None
    hold: HoldConfig | None = Field(default=None, description="Written by `cutover writes` (facade.hold_edit); rarely by hand.")

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ROUTE_ID.match(value):
            raise ValueError(f"route id {value!r} must be letters, digits, '-', '_' or '.', e.g. catalog-read")
        if value == "default":
            raise ValueError("route id 'default' is reserved for the default route; choose another")
        return value


class DefaultRoute(_Model):
    """Where everything no route matched goes (normally the monolith)."""

    to: str
    timeout: Duration | None = None
    retries: RetryConfig = RetryConfig()
    fallback: str | None = None


class FacadeConfig(_Model):
    """The whole `routing.yaml`."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="strangler routing.yaml")

    version: Literal[1] = 1
    admin: AdminConfig = AdminConfig()
    assignment: AssignmentConfig = AssignmentConfig()
    breaker: BreakerConfig = BreakerConfig()
    limits: LimitsConfig = LimitsConfig()
    upstreams: dict[str, UpstreamConfig] = Field(description="Backends by name.")
    routes: tuple[RouteConfig, ...] = Field(default=(), description="Matched in declared order; the first match wins.")
    default: DefaultRoute = Field(description="Required: where unmatched requests go.")
    shadow_store: ShadowStoreConfig = ShadowStoreConfig()
    shadow_worker: ShadowWorkerConfig = ShadowWorkerConfig()

    @model_validator(mode="before")
    @classmethod
    def _name_upstreams(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("upstreams"), dict):
            upstreams = {
                name: ({"name": name, **value} if isinstance(value, dict) and "name" not in value else value)
                for name, value in data["upstreams"].items()
            }
            data = {**data, "upstreams": upstreams}
        return data

    @model_validator(mode="after")
    def _cross_references(self, info: ValidationInfo) -> FacadeConfig:
        if info.context and info.context.get("cross_checked"):
            return self
        for name, upstream in self.upstreams.items():
            if upstream.name != name:
                raise ValueError(f"upstream {name!r} is named {upstream.name!r}; leave `name` out, the key names it")
        found = _cross_problems(self.model_dump())
        if found:
            raise ValueError("; ".join(problem.message for problem in found))
        return self


# --------------------------------------------------------------------------------------------
# Problems


class ConfigError(FacadeError, FileError):
    """A configuration file is invalid; `problems` lists everything wrong with it."""


# --------------------------------------------------------------------------------------------
# Cross-reference checks over plain data (the loader's raw data or a model dump)

_Found = Found


def _route_label(route: object, index: int) -> str:
    if isinstance(route, dict) and isinstance(route.get("id"), str):
        return f"route {route['id']!r}"
    return f"route #{index + 1}"


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _fmt_percent(value: float) -> str:
    return f"{value:g}"


def _cross_problems(data: Mapping[str, Any]) -> list[_Found]:
    found: list[_Found] = []
    upstreams = data.get("upstreams")
    declared = list(upstreams) if isinstance(upstreams, dict) else []
    declared_text = ", ".join(str(name) for name in declared) or "(none)"

    def unknown(name: object) -> bool:
        return isinstance(upstreams, dict) and isinstance(name, str) and name not in upstreams

    routes = data.get("routes")
    routes = routes if isinstance(routes, list | tuple) else []
    seen_ids: dict[str, int] = {}
    compiled: list[tuple[int, str, tuple[str, ...], frozenset[str] | None, dict[str, dict[str, str]]]] = []
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        label = _route_label(route, index)
        route_id = route.get("id")
        if isinstance(route_id, str):
            if route_id in seen_ids:
                found.append(
                    _Found(
                        ("routes", index, "id"),
                        False,
                        f"route id {route_id!r} is used by routes #{seen_ids[route_id] + 1} and #{index + 1}; route ids must be unique.",
                    )
                )
            else:
                seen_ids[route_id] = index
        found.extend(_weight_problems(route, index, label, unknown, declared_text))
        if unknown(route.get("fallback")):
            found.append(
                _Found(
                    ("routes", index, "fallback"),
                    False,
                    f"{label} falls back to {route['fallback']!r}, which is not a declared upstream; declared: {declared_text}.",
                )
            )
        shadow = route.get("shadow")
        if isinstance(shadow, dict) and unknown(shadow.get("to")):
            found.append(
                _Found(
                    ("routes", index, "shadow", "to"),
                    False,
                    f"{label} mirrors to {shadow['to']!r}, which is not a declared upstream; declared: {declared_text}.",
                )
            )
        matcher = _plain_matcher(route.get("match", {}))
        if matcher is not None and matcher[0][:1] == (RESERVED_PREFIX.strip("/"),):
            found.append(
                _Found(
                    ("routes", index, "match", "path"),
                    False,
                    f"{label} matches {route['match'].get('path')!r}, but {RESERVED_PREFIX} is reserved for the "
                    "façade's admin API and never routed; choose another path.",
                )
            )
        if matcher is not None:
            found.extend(_shadowed(index, label, matcher, compiled))
            compiled.append((index, f"{label} (#{index + 1})", *matcher))
    default = data.get("default")
    if isinstance(default, dict):
        for key, verb in (("to", "sends to"), ("fallback", "falls back to")):
            if unknown(default.get(key)):
                found.append(
                    _Found(
                        ("default", key),
                        False,
                        f"the default route {verb} {default[key]!r}, which is not a declared upstream; declared: {declared_text}.",
                    )
                )
    return found


def _weight_problems(
    route: dict[str, Any], index: int, label: str, unknown: Callable[[object], bool], declared_text: str
) -> list[_Found]:
    found: list[_Found] = []
    weights = route.get("to")
    if isinstance(weights, str):
        weights = {weights: 100}
    if not isinstance(weights, dict):
        return found
    numbers: dict[str, float] = {}
    for name, raw in weights.items():
        value = _number(raw)
        if unknown(name):
            amount = f"{_fmt_percent(value)}%" if value is not None else "traffic"
            found.append(
                _Found(
                    ("routes", index, "to", name),
                    True,
                    f"{label} sends {amount} to {name!r}, which is not a declared upstream; declared: {declared_text}.",
                )
            )
        if value is None:
            continue
        if value < 0 or value > 100:
            found.append(
                _Found(
                    ("routes", index, "to", name),
                    False,
                    f"{label} gives {name!r} a weight of {_fmt_percent(value)}%; weights are percentages from 0 to 100.",
                )
            )
        elif abs(round(value * 100) - value * 100) > 1e-6:
            found.append(
                _Found(
                    ("routes", index, "to", name),
                    False,
                    f"{label} gives {name!r} a weight of {value!r}%; weights have a resolution of 0.01%, e.g. 0.25.",
                )
            )
        numbers[str(name)] = value
    if not weights:
        found.append(_Found(("routes", index, "to"), False, f"{label} sends to no upstream; write e.g. to: {{monolith: 100}}."))
    elif len(numbers) == len(weights) and round(sum(numbers.values()) * 100) != 10000:
        parts = " + ".join(f"{name} {_fmt_percent(value)}" for name, value in numbers.items())
        found.append(
            _Found(
                ("routes", index, "to"),
                False,
                f"{label} weights add up to {_fmt_percent(round(sum(numbers.values()), 2))}% ({parts}); they must add up to 100.",
            )
        )
    return found


def _plain_matcher(match: object) -> tuple[tuple[str, ...], frozenset[str] | None, dict[str, dict[str, str]]] | None:
    """(segments, methods, conditions) from a plain `match:` mapping, or None when it is malformed."""
    if not isinstance(match, dict):
        return None
    try:
        segments = parse_path_template(match.get("path", "/**"))
    except ValueError:
        return None
    methods = match.get("methods")
    if methods is not None and not (isinstance(methods, list | tuple) and all(isinstance(m, str) for m in methods)):
        return None
    conditions: dict[str, dict[str, str]] = {}
    for kind in ("headers", "cookies", "query"):
        value = match.get(kind) or {}
        if not isinstance(value, dict):
            return None
        plain = {str(name): str(_scalar_to_str(cond)) for name, cond in value.items()}
        conditions[kind] = {name.lower(): cond for name, cond in plain.items()} if kind == "headers" else plain
    return (
        segments,
        frozenset(method.upper() for method in methods) if methods is not None else None,
        conditions,
    )


def _shadowed(
    index: int,
    label: str,
    matcher: tuple[tuple[str, ...], frozenset[str] | None, dict[str, dict[str, str]]],
    earlier: Iterable[tuple[int, str, tuple[str, ...], frozenset[str] | None, dict[str, dict[str, str]]]],
) -> list[_Found]:
    segments, methods, conditions = matcher
    for _, other_label, other_segments, other_methods, other_conditions in earlier:
        if not template_covers(other_segments, segments):
            continue
        if other_methods is not None and (methods is None or not methods <= other_methods):
            continue
        # Only provable shadowing: every condition of the earlier route is literally one of ours.
        if not all(
            conditions[kind].get(name) == value
            for kind, named in other_conditions.items()
            for name, value in named.items()
        ):
            continue
        return [
            _Found(
                ("routes", index, "match"),
                True,
                f"{label} can never match: the earlier {other_label} matches every request it would; "
                f"move {label} above it or narrow the earlier one.",
            )
        ]
    return []


# --------------------------------------------------------------------------------------------
# Loading (through the one loader every YAML format shares)


def _syntax_hint(what: str) -> str | None:
    if "but got '{'" in what:
        return 'a path template with {name} inside a {...} mapping must be quoted, e.g. {path: "/api/products/{id}"}'
    return None


def check_text(
    text: str, file: str = "routing.yaml", *, env: Mapping[str, str] | None = None
) -> tuple[FacadeConfig | None, list[Problem]]:
    """Parse and validate `text`: the config when it is valid, and every problem found, in file order."""
    return yamlfile.check_text(
        text,
        file,
        FacadeConfig,
        env=env,
        prepare=_interpolate_data,
        cross=_cross_problems,
        label=_context,
        hints=_HINTS,
        empty="the file is empty; it needs at least `upstreams:` and `default:`.",
        not_mapping="the file must be a mapping with `upstreams:`, `routes:` and `default:`.",
        syntax_hint=_syntax_hint,
        context={"cross_checked": True},
    )


def parse_config(text: str, file: str = "routing.yaml", *, env: Mapping[str, str] | None = None) -> FacadeConfig:
    """The validated config in `text`, or `ConfigError` with every problem."""
    config, problems = check_text(text, file, env=env)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> FacadeConfig:
    """Read, interpolate (from `env`, default `os.environ`) and validate a routing file.

    Raises `ConfigError` listing every problem, each `file:line:col: message`.
    """
    return parse_config(_read(path), str(path), env=env)


def check_file(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem in a routing file (empty when it is valid)."""
    try:
        text = _read(path)
    except ConfigError as exc:
        return exc.problems
    return check_text(text, str(path), env=env)[1]


def _read(path: str | os.PathLike[str]) -> str:
    return yamlfile.read_text(path, error=ConfigError)


def _interpolate_data(data: dict[str, Any], env: Mapping[str, str]) -> list[_Found]:
    """Interpolate `${VAR:-default}` in place in upstream URLs and the admin token."""
    found: list[_Found] = []
    targets: list[tuple[dict[str, Any], str, Loc, str]] = []
    upstreams = data.get("upstreams")
    if isinstance(upstreams, dict):
        for name, upstream in upstreams.items():
            if isinstance(upstream, dict):
                targets.append((upstream, "url", ("upstreams", name, "url"), f"upstream {name!r} url"))
    admin = data.get("admin")
    if isinstance(admin, dict):
        targets.append((admin, "token", ("admin", "token"), "admin token"))
    for holder, key, loc, label in targets:
        value = holder.get(key)
        if isinstance(value, str):
            try:
                holder[key] = interpolate(value, env)
            except ValueError as exc:
                found.append(_Found(loc, False, f"{label}: {exc}"))
    return found


# --------------------------------------------------------------------------------------------
# Pydantic errors as house-style sentences

_HINTS = {
    "to": "add the upstream weights, e.g. to: {monolith: 100}",
    "id": "give the route a unique id, e.g. id: catalog-read",
    "default": "add `default: {to: monolith}`; every request no route matches goes there",
    "upstreams": "declare the backends, e.g. upstreams: {monolith: {url: http://127.0.0.1:8001}}",
    "url": "add its base URL, e.g. url: http://127.0.0.1:8001",
}


def _context(loc: Loc, data: Mapping[str, Any]) -> tuple[str, Loc]:
    """A label for where `loc` is ("route 'x'", "upstream 'y'") and the rest of the location."""
    if len(loc) >= 2 and loc[0] == "routes" and isinstance(loc[1], int):
        routes = data.get("routes")
        route = routes[loc[1]] if isinstance(routes, list) and loc[1] < len(routes) else None
        return _route_label(route, loc[1]), loc[2:]
    if len(loc) >= 2 and loc[0] == "upstreams":
        return f"upstream {loc[1]!r}", loc[2:]
    if loc and loc[0] == "default":
        return "the default route", loc[1:]
    return "", loc


# --------------------------------------------------------------------------------------------
# JSON Schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema of `routing.yaml`, for editors (`strangler routes schema` writes it)."""
    schema = FacadeConfig.model_json_schema(mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "routing.schema.json", **schema}
