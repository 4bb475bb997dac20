"""What a routing edit does to recorded traffic: `strangler routes dry-run`. Pure, nothing sent.

Each record written by `facade.traffic` is replayed through two route tables (as they are and as
they would become). Matching works on the recorded digests: a literal header or cookie condition
holds when the literal's keyed digest equals the recorded one, a `~regex` condition by the result
recorded for it, query and path conditions on the recorded text. Upstream choice is the façade's:
the override header, else the sticky key's digest (or the assignment cookie's) through the same
`Route.digest_bucket` the façade uses, so predictions are exact. A record the new table cannot be
judged on (a header it never recorded, a regex it never evaluated) is counted as unpredictable
with the reason. Health checks of referenced upstreams are the one I/O, done by `check_health`.

Requests that change upstream are counted per (route, old → new, endpoint), the route and endpoint
being those of the table in force, under which the façade mirrored and stored them. Given the shadow
store's comparisons of those routes (read by the caller; this module imports nothing of
`facade.shadow`), `forecast_mismatches` predicts how many of the moving requests the new upstream
answers differently: moving × the history's mismatch rate, counted as the cutover gate counts it.
The store does not record a comparison's target, so a route's history speaks for the upstream its
`shadow.to` names in the table in force, and for no other.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

from facade.exceptions import FacadeError
from facade.routing import Route, RouteTable, key_digest, sticky_key
from facade.traffic import RECORD_VERSION, condition_label, key_id

__all__ = [
    "LEAST_HISTORY",
    "DryRunError",
    "Forecast",
    "MoveForecast",
    "Prediction",
    "Report",
    "check_health",
    "dry_run",
    "forecast_mismatches",
    "mirrored_routes",
    "predict",
    "read_traffic",
]

LEAST_HISTORY = 20
"""Fewer comparisons than this on a route or endpoint are too little history to predict from."""

WORST = 5
"""Endpoints shown per moving route, worst first."""


class DryRunError(FacadeError):
    """The traffic file cannot be replayed through these tables."""


class _Unknown(Exception):
    """A record the table cannot be judged on; the message says why."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """Where one recorded request goes under one table; `user` is its key's digest, if any."""

    route: str
    upstream: str
    user: str | None


def read_traffic(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The records of a traffic file, one by one; `DryRunError` as `file:line:col: problem`."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise DryRunError(f"{path}:1:1: cannot read the traffic file: {exc.strerror or exc}.") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DryRunError(f"{path}:{number}:{exc.colno}: not a JSON record ({exc.msg}); record it with traffic_record.") from None
            if not isinstance(record, dict) or record.get("v") != RECORD_VERSION:
                found = record.get("v") if isinstance(record, dict) else record
                raise DryRunError(f"{path}:{number}:1: record version {found!r} is not {RECORD_VERSION}; record it again with this façade.")
            yield record


def _holds(table: RouteTable, record: Mapping[str, Any], kind: str, name: str, condition: str) -> bool:
    recorded = record["headers" if kind == "header" else "cookies"]
    if condition.startswith("~"):
        label = condition_label(kind, name, condition)
        if label not in record["re"]:
            raise _Unknown(f"{label} was not evaluated when the traffic was recorded")
        return bool(record["re"][label])
    if name not in recorded:
        raise _Unknown(f"{kind} {name!r} was not recorded")
    value = recorded[name]
    if value is None:
        return False
    literal = condition[1:] if condition.startswith("\\~") else condition
    assert table.secret is not None
    return value == (key_digest(table.secret, literal).hex() if literal else "")


@functools.lru_cache(maxsize=4096)
def _plain(route: Route) -> Route:
    """The route without its header and cookie conditions (those are judged on digests)."""
    match = route.config.match
    if not (match.headers or match.cookies):
        return route
    config = route.config.model_copy(update={"match": match.model_copy(update={"headers": {}, "cookies": {}})})
    return Route.compile(config, route.index)


def _matches(table: RouteTable, route: Route, record: Mapping[str, Any], path: str, query: Mapping[str, list[str]]) -> bool:
    # Path, method and query conditions on the recorded text, through the route's own matcher.
    if not _plain(route).matches(record["method"], path, {}, {}, query):
        return False
    match = route.config.match
    return all(_holds(table, record, "header", n, c) for n, c in match.headers.items()) and all(
        _holds(table, record, "cookie", n, c) for n, c in match.cookies.items()
    )


def predict(table: RouteTable, record: Mapping[str, Any]) -> Prediction:
    """The route and upstream `table` gives a recorded request; `_Unknown` when it cannot tell."""
    path = unquote(record["path"].split("?", 1)[0])
    query: dict[str, list[str]] = {}
    for key, value in parse_qsl(record["query"], keep_blank_values=True):
        query.setdefault(key, []).append(value)
    route = next((r for r in table.routes if _matches(table, r, record, path, query)), table.default)
    if route.config.sticky is not None:
        for kind, name in (("header", route.config.sticky.header), ("cookie", route.config.sticky.cookie)):
            if name is not None and (name.lower() if kind == "header" else name) not in record[kind + "s"]:
                raise _Unknown(f"route {route.id!r} is sticky on {kind} {name!r}, which was not recorded")
        user = sticky_key(route, record["headers"], record["cookies"], record["client"])
    else:
        user = None
    forced = record.get("forced")
    if forced is not None and table.config.assignment.override_header and forced in route.overridable:
        return Prediction(route.id, forced, user)
    if user is None and len(route.upstreams) > 1:
        user = record.get("assign")
    serving = [name for name in route.upstreams if route.weights[name] > 0]
    if len(serving) == 1:
        return Prediction(route.id, serving[0], user)
    if user is None:
        raise _Unknown(f"route {route.id!r} splits traffic but the record carries no key")
    return Prediction(route.id, route.upstream_for_bucket(route.digest_bucket(bytes.fromhex(user))), user)


@dataclass
class Report:
    """The effect of going from `before` to `after` on the recorded traffic (weighted counts)."""

    before: str
    after: str
    requests: float = 0.0
    records: int = 0
    shares_before: Counter[tuple[str, str]] = field(default_factory=Counter)
    shares_after: Counter[tuple[str, str]] = field(default_factory=Counter)
    forward: set[str] = field(default_factory=set)
    back: set[str] = field(default_factory=set)
    moved_requests: float = 0.0
    rerouted: Counter[tuple[str, str]] = field(default_factory=Counter)
    unpredictable: Counter[str] = field(default_factory=Counter)
    never_hit: list[str] = field(default_factory=list)
    unhealthy: dict[str, str] = field(default_factory=dict)
    """Upstreams the new table sends traffic to that failed their health check: name → reason."""
    moving: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    """Requests changing upstream: (route, old, new, endpoint) in the table in force → weighted count."""
    shadow: list[MoveForecast] | None = None
    """The mismatches the shadow history predicts per moving route; None when not looked up."""
    shadow_note: str | None = None
    """Why there is no shadow history at all (no store, an empty one), when that is so."""

    @property
    def ok(self) -> bool:
        return not self.back and not self.unhealthy

    def as_dict(self) -> dict[str, Any]:
        def shares(counter: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
            total = sum(counter.values()) or 1.0
            return [
                {"route": route, "upstream": upstream, "requests": round(count, 3), "share": round(100 * count / total, 2)}
                for (route, upstream), count in sorted(counter.items())
            ]

        return {
            "before": self.before,
            "after": self.after,
            "records": self.records,
            "requests": round(self.requests, 3),
            "shares_before": shares(self.shares_before),
            "shares_after": shares(self.shares_after),
            "users_forward": len(self.forward),
            "users_back": len(self.back),
            "moved_requests": round(self.moved_requests, 3),
            "rerouted": [{"from": a, "to": b, "requests": round(n, 3)} for (a, b), n in sorted(self.rerouted.items())],
            "unpredictable": dict(self.unpredictable),
            "never_hit": self.never_hit,
            "unhealthy": self.unhealthy,
            "shadow": None if self.shadow is None else {
                "note": self.shadow_note,
                "predicted_mismatches": round(sum(m.total.predicted or 0.0 for m in self.shadow), 3),
                "routes": [m.as_dict() for m in self.shadow],
            },
            "ok": self.ok,
        }


def dry_run(before: RouteTable, after: RouteTable, records: Iterable[Mapping[str, Any]], *, before_name: str = "before", after_name: str = "after") -> Report:
    """Replay `records` through both tables (pure). `DryRunError` when the keys differ."""
    report = Report(before_name, after_name)
    hits: Counter[str] = Counter()
    for table, name in ((before, before_name), (after, after_name)):
        if table.secret is None:
            raise DryRunError(f"{name} has no assignment.key, so its buckets cannot be recomputed from digests; set the key it was recorded with.")
    moved: defaultdict[str, set[str]] = defaultdict(set)
    for number, record in enumerate(records, 1):
        if record.get("kid") != key_id(after.secret) or record.get("kid") != key_id(before.secret):  # type: ignore[arg-type]
            raise DryRunError(
                f"record {number} of the traffic was made under another assignment.key than {before_name} and {after_name} use; "
                "set the key it was recorded with (a new key reassigns every user on split routes)."
            )
        report.records += 1
        weight = float(record.get("w", 1.0))
        report.requests += weight
        try:
            old, new = predict(before, record), predict(after, record)
        except _Unknown as exc:
            report.unpredictable[str(exc)] += 1
            continue
        report.shares_before[old.route, old.upstream] += weight
        report.shares_after[new.route, new.upstream] += weight
        hits[new.route] += 1
        if old.route != new.route:
            report.rerouted[old.route, new.route] += weight
        if old.upstream != new.upstream:
            report.moved_requests += weight
            endpoint = before.by_id[old.route].endpoint(record["method"], record["path"].split("?", 1)[0])
            report.moving[old.route, old.upstream, new.upstream, endpoint] += weight
            user = new.user or old.user or record.get("assign") or record.get("client") or "anonymous"
            moved["forward" if _forward(after.by_id[new.route], old.upstream, new.upstream) else "back"].add(user)
    report.forward, report.back = moved["forward"], moved["back"]
    report.never_hit = [route.id for route in after.all_routes if not hits[route.id]]
    return report


@dataclass(frozen=True, slots=True)
class Forecast:
    """`moving` (weighted) requests, and the history of the new upstream's answers to their kind:
    `compared` live comparisons, `mismatched` of them failed or different once noise is removed."""

    moving: float
    compared: int = 0
    mismatched: int = 0

    @property
    def rate(self) -> float | None:
        return self.mismatched / self.compared if self.compared else None

    @property
    def predicted(self) -> float | None:
        """Mismatching answers expected among the moving requests (moving × rate)."""
        rate = self.rate
        return None if rate is None else self.moving * rate

    @property
    def enough(self) -> bool:
        return self.compared >= LEAST_HISTORY

    def as_dict(self) -> dict[str, Any]:
        rate, predicted = self.rate, self.predicted
        return {
            "moving": round(self.moving, 3),
            "compared": self.compared,
            "mismatched": self.mismatched,
            "mismatch_rate": None if rate is None else round(rate, 6),
            "predicted_mismatches": None if predicted is None else round(predicted, 3),
            "enough_history": self.enough,
        }


@dataclass(frozen=True, slots=True)
class MoveForecast:
    """The prediction for the requests moving from `old` to `new` on `route` (table in force), with
    its endpoints worst first (most predicted mismatches); `note` says why it is missing or weak."""

    route: str
    old: str
    new: str
    total: Forecast
    endpoints: tuple[tuple[str, Forecast], ...] = ()
    note: str | None = None

    def worst(self, count: int = WORST) -> list[tuple[str, Forecast]]:
        """The endpoints with history and predicted mismatches, worst first."""
        return [(name, f) for name, f in self.endpoints if f.predicted][:count]

    def as_dict(self) -> dict[str, Any]:
        return {
            "route": self.route,
            "from": self.old,
            "to": self.new,
            **self.total.as_dict(),
            "note": self.note,
            "endpoints": [{"endpoint": name, **f.as_dict()} for name, f in self.endpoints],
        }


def mirrored_routes(report: Report, before: RouteTable) -> list[str]:
    """Routes of the table in force whose moving requests go to the upstream they mirror to."""
    return sorted(
        {route for route, _, new, _ in report.moving if (shadow := before.by_id[route].config.shadow) is not None and shadow.to == new}
    )


def forecast_mismatches(report: Report, before: RouteTable, history: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[MoveForecast]:
    """Per (route, old → new) of `report`'s moving requests, the mismatches the history predicts (pure).

    `history` maps a route id to its rows of the shadow store (`ShadowStore.load(...).comparisons`);
    only live comparisons count, and one that was not `compared` or not `match_denoised` is a
    mismatch, as the cutover gate counts them. A route missing from `history` has none.
    """
    # Live comparisons and mismatches per (route, endpoint), and per (route, None) for the route.
    compared: Counter[tuple[str, str | None]] = Counter()
    mismatched: Counter[tuple[str, str | None]] = Counter()
    for route in {key[0] for key in report.moving}:
        for row in history.get(route, ()):
            if row.get("source") != "live":
                continue
            for key in ((route, row["endpoint"]), (route, None)):
                compared[key] += 1
                mismatched[key] += row.get("outcome") != "compared" or not row.get("match_denoised")
    groups: defaultdict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    for (route, old, new, endpoint), weight in report.moving.items():
        groups[route, old, new][endpoint] = weight

    def forecast(key: tuple[str, str | None], weight: float, relevant: bool) -> Forecast:
        return Forecast(weight, compared[key], mismatched[key]) if relevant else Forecast(weight)

    forecasts = []
    for (route, old, new), moving in sorted(groups.items()):
        shadow = before.by_id[route].config.shadow
        relevant = shadow is not None and shadow.to == new
        endpoints = sorted(
            ((endpoint, forecast((route, endpoint), weight, relevant)) for endpoint, weight in moving.items()),
            key=lambda item: (-(item[1].predicted or 0.0), -item[1].moving, item[0]),
        )
        total = forecast((route, None), sum(moving.values()), relevant)
        if shadow is None:
            note = f"route {route} has no shadow: in {report.before}, so the store holds no history of {new}'s answers"
        elif not relevant:
            note = f"route {route} mirrors to {shadow.to} in {report.before}, not to {new}: no history of {new}'s answers"
        elif not total.compared:
            note = f"no shadow history of {new} on route {route}"
        elif not total.enough:
            note = f"too little history to predict ({total.compared} comparisons, fewer than {LEAST_HISTORY})"
        else:
            note = None
        forecasts.append(MoveForecast(route, old, new, total, tuple(endpoints), note))
    return forecasts


def _forward(route: Route, old: str, new: str) -> bool:
    """A move to an upstream listed later (oldest first) on the route it lands on; the default's is the oldest."""
    order = list(route.upstreams)
    position = {name: index for index, name in enumerate(order)}
    return position.get(new, len(order)) > position.get(old, -1)


def referenced(table: RouteTable) -> list[str]:
    """Upstreams the table sends traffic to (weight above 0, the default, fallbacks)."""
    names = {name for route in table.all_routes for name, weight in route.weights.items() if weight > 0}
    names |= {route.config.fallback for route in table.all_routes if route.config.fallback}
    return sorted(names)


def check_health(table: RouteTable, get: Callable[[str], int], *, path: str = "/healthz") -> dict[str, str]:
    """Upstreams the table references that fail `GET <url><path>`: name → reason.

    `get(url)` returns the status or raises `OSError`-like errors with a readable message.
    """
    failing: dict[str, str] = {}
    for name in referenced(table):
        url = table.upstreams[name].url + path
        try:
            status = get(url)
        except Exception as exc:
            failing[name] = f"GET {url} failed: {exc}"
            continue
        if status >= 400:
            failing[name] = f"GET {url} answered {status}"
    return failing
