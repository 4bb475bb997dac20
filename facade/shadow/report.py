"""Shadow comparison reports: aggregated from the shadow store (rendered by `facade.shadow.render`).

`build_report` is pure over `StoreData`: per route and endpoint it counts comparisons, match rates
with and without noise removal (noise recomputed from all stored counts, see `facade.shadow.noise`),
the status matrix, the top differing fields with kind, counts and a sample, latency percentiles of
both sides, candidate errors and dropped shadows. `make_report` reads a store and builds it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from facade.config import FacadeConfig
from facade.shadow.exceptions import ReportError
from facade.shadow.noise import EndpointNoise, FieldCounts, NoiseModel, NoiseThresholds
from facade.shadow.store import ShadowStore, StoreData

__all__ = [
    "EndpointReport",
    "FieldReport",
    "Report",
    "RouteReport",
    "build_report",
    "make_report",
    "parse_since",
]

TOP_FIELDS = 10


@dataclass
class Latency:
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


@dataclass
class FieldReport:
    field: str
    kinds: dict[str, int]
    candidate: int
    noise: int
    real: bool
    rate: float  # share of compared requests whose candidate differed in this field
    sample: dict[str, Any] | None = None


@dataclass
class EndpointReport:
    endpoint: str
    compared: int
    matched: int
    matched_denoised: int
    noise_probes: int
    errors: dict[str, int]
    status_matrix: dict[str, int]
    fields: list[FieldReport]
    primary_latency: Latency
    candidate_latency: Latency

    @property
    def match_rate(self) -> float | None:
        return self.matched / self.compared if self.compared else None

    @property
    def match_rate_denoised(self) -> float | None:
        return self.matched_denoised / self.compared if self.compared else None


@dataclass
class RouteReport:
    route: str
    compared: int
    matched: int
    matched_denoised: int
    errors: dict[str, int]
    dropped: dict[str, int]
    endpoints: list[EndpointReport]
    timeline: list[tuple[float, int, int]]  # (bucket start, compared, mismatched after noise removal)
    primary_latency: Latency = field(default_factory=Latency)
    candidate_latency: Latency = field(default_factory=Latency)

    @property
    def mismatch_rate(self) -> float | None:
        return 1 - self.matched_denoised / self.compared if self.compared else None


@dataclass
class Report:
    generated: float
    since: float | None
    route_filter: str | None
    compared: int
    matched: int
    matched_denoised: int
    routes: list[RouteReport]

    @property
    def mismatch_rate(self) -> float:
        """Share of compared requests that differ once noise is removed (0 when none compared)."""
        return 1 - self.matched_denoised / self.compared if self.compared else 0.0

    @property
    def mismatch_rate_raw(self) -> float:
        return 1 - self.matched / self.compared if self.compared else 0.0

    @property
    def errors(self) -> int:
        """Shadowed requests the candidate never answered in time (timed out or failed)."""
        return sum(sum(r.errors.values()) for r in self.routes)

    @property
    def error_rate(self) -> float:
        """Share of shadowed requests the candidate did not answer (0 when none were sent)."""
        attempted = self.compared + self.errors
        return self.errors / attempted if attempted else 0.0

def parse_since(text: str | None, *, now: float) -> float | None:
    """`1h`, `30m`, `2d`, `1w`, or an ISO 8601 time → epoch seconds; None for no bound."""
    if not text:
        return None
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*", text)
    if found:
        return now - float(found.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[found.group(2)]
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"--since {text!r} is neither a duration nor a time; write e.g. 1h, 30m, 2d or 2024-05-01T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()

def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return round(ordered[rank], 3)


def _latency(values: Sequence[float]) -> Latency:
    return Latency(_percentile(values, 50), _percentile(values, 95), _percentile(values, 99))


def build_report(
    data: StoreData,
    *,
    now: float,
    since: float | None = None,
    route_filter: str | None = None,
    thresholds: Mapping[str, NoiseThresholds] | None = None,
    buckets: int = 24,
) -> Report:
    """Aggregate stored comparisons into a report (pure)."""
    thresholds = thresholds or {}
    diffs_by_comparison: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for d in data.differences:
        diffs_by_comparison[d["comparison_id"]].append(d)

    by_route: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in data.comparisons:
        by_route[c["route"]].append(c)
    dropped: dict[str, Counter[str]] = defaultdict(Counter)
    for d in data.drops:
        dropped[d["route"]][d["reason"]] += d["count"]
    samples: dict[tuple[str, str], dict[str, Any]] = {}
    for s in data.samples:
        samples.setdefault((s["endpoint"], s["field"]), s)

    times = [c["ts"] for c in data.comparisons]
    start, end = (min(times), max(times)) if times else (now, now)
    width = max((end - start) / buckets, 1.0)

    routes = []
    for route in sorted(set(by_route) | set(dropped)):
        rows = by_route.get(route, [])
        model = NoiseModel(thresholds.get(route))
        compared_rows = [c for c in rows if c["outcome"] == "compared"]
        candidate_fields: dict[int, set[str]] = {}
        noise_fields: dict[int, set[str]] = {}
        kinds: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for c in compared_rows:
            cand = set()
            noise = set()
            for d in diffs_by_comparison.get(c["id"], ()):
                if d["origin"] == "noise":
                    noise.add(d["field"])
                else:
                    cand.add(d["field"])
                    kinds[(c["endpoint"], d["field"])][d["kind"]] += 1
            candidate_fields[c["id"]] = cand
            noise_fields[c["id"]] = noise
            model.observe(c["endpoint"], cand, noise if c["noise_probe"] else None)

        endpoints = []
        timeline_total: Counter[int] = Counter()
        timeline_bad: Counter[int] = Counter()
        route_matched = route_denoised = 0
        for endpoint in sorted({c["endpoint"] for c in rows}):
            ep_rows = [c for c in rows if c["endpoint"] == endpoint]
            ep_compared = [c for c in ep_rows if c["outcome"] == "compared"]
            matched = denoised = 0
            for c in ep_compared:
                verdict = model.verdict(endpoint, candidate_fields[c["id"]], noise_fields[c["id"]])
                matched += not candidate_fields[c["id"]]
                denoised += verdict.matches
                bucket = int((c["ts"] - start) // width)
                timeline_total[bucket] += 1
                timeline_bad[bucket] += not verdict.matches
            route_matched += matched
            route_denoised += denoised
            stats = model.endpoints.get(endpoint, EndpointNoise())
            field_reports = []
            for name, counts in stats.fields.items():
                if counts.candidate == 0:
                    continue
                sample = samples.get((endpoint, name))
                field_reports.append(
                    FieldReport(
                        field=name,
                        kinds=dict(kinds[(endpoint, name)]),
                        candidate=counts.candidate,
                        noise=counts.noise,
                        real=model.is_real(endpoint, name),
                        rate=counts.candidate / max(stats.compared, 1),
                        sample=_sample(sample),
                    )
                )
            field_reports.sort(key=lambda f: (not f.real, -f.candidate, f.field))
            status = Counter(f"{c['primary_status']}→{c['candidate_status'] if c['candidate_status'] is not None else '—'}" for c in ep_rows)
            endpoints.append(
                EndpointReport(
                    endpoint=endpoint,
                    compared=len(ep_compared),
                    matched=matched,
                    matched_denoised=denoised,
                    noise_probes=stats.probes,
                    errors=dict(Counter(c["outcome"] for c in ep_rows if c["outcome"] != "compared")),
                    status_matrix=dict(sorted(status.items())),
                    fields=field_reports[:TOP_FIELDS],
                    primary_latency=_latency([c["primary_ms"] for c in ep_rows if c["primary_ms"] is not None]),
                    candidate_latency=_latency([c["candidate_ms"] for c in ep_compared if c["candidate_ms"] is not None]),
                )
            )
        timeline = [(start + b * width, timeline_total[b], timeline_bad[b]) for b in sorted(timeline_total)]
        routes.append(
            RouteReport(
                route=route,
                compared=len(compared_rows),
                matched=route_matched,
                matched_denoised=route_denoised,
                errors=dict(Counter(c["outcome"] for c in rows if c["outcome"] != "compared")),
                dropped=dict(dropped.get(route, {})),
                endpoints=endpoints,
                timeline=timeline,
                primary_latency=_latency([c["primary_ms"] for c in rows if c["primary_ms"] is not None]),
                candidate_latency=_latency([c["candidate_ms"] for c in compared_rows if c["candidate_ms"] is not None]),
            )
        )
    return Report(
        generated=now,
        since=since,
        route_filter=route_filter,
        compared=sum(r.compared for r in routes),
        matched=sum(r.matched for r in routes),
        matched_denoised=sum(r.matched_denoised for r in routes),
        routes=routes,
    )


def _sample(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {k: row[k] for k in ("path", "kind", "request", "primary_value", "candidate_value")}


def noise_counts(stats: Mapping[str, Mapping[str, tuple[int, int]]]) -> dict[str, EndpointNoise]:
    """Helper for tests and callers holding plain counts: endpoint → field → (candidate, noise)."""
    return {ep: EndpointNoise(fields={f: FieldCounts(c, n) for f, (c, n) in fields.items()}) for ep, fields in stats.items()}


def make_report(
    store: ShadowStore, *, since: str | None = None, route: str | None = None, config: FacadeConfig | None = None, now: float | None = None
) -> Report:
    """Read the store and aggregate it, with each route's noise thresholds from `config`."""
    now = time.time() if now is None else now
    since_ts = parse_since(since, now=now)
    thresholds = {}
    if config is not None:
        for r in config.routes:
            if r.shadow is not None:
                thresholds[r.id] = NoiseThresholds(r.shadow.compare.relative_threshold, r.shadow.compare.absolute_threshold)
    data = store.load(since=since_ts, route=route)
    if not data.comparisons:
        raise ReportError(_nothing_to_report(store, route, since))
    return build_report(data, now=now, since=since_ts, route_filter=route, thresholds=thresholds)


def _nothing_to_report(store: ShadowStore, route: str | None, since: str | None) -> str:
    routes = store.routes()
    if not routes:
        return store.empty_message()
    if route is not None and route not in routes:
        return f"route {route!r} has no comparisons in the shadow store; routes with comparisons: {', '.join(routes)} (check --route)"
    which = f" for route {route!r}" if route is not None else ""
    return f"the shadow store has no comparisons{which} since {since!r}; widen --since or leave it out"
