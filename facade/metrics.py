"""Prometheus metrics of the façade, as an addon over its own registry.

- `strangler_requests_total{route, upstream, method, status}`: status as a class (`2xx`, ...).
- `strangler_errors_total{route, upstream, reason}`: failures the façade saw (timeouts, resets,
  aborted responses, open breakers, clients gone).
- `strangler_request_duration_seconds{route, upstream}`: whole request, histogram.
- `strangler_upstream_duration_seconds{route, upstream}`: until the upstream's response head.
- `strangler_breaker_state{upstream}`: 0 closed, 1 half-open, 2 open (read at scrape time).
- `strangler_hold_waiting{route}`: requests waiting in a write hold now (read at scrape time);
  `strangler_held_requests_total{route, outcome}` (`released`, `budget_exceeded`) and
  `strangler_hold_wait_seconds{route}` once each stops waiting; `strangler_holds_total{route, end}`
  (`cleared`, `expired`) and `strangler_hold_duration_seconds{route}` (installed → released).
- `strangler_reloads_total{result}`, `strangler_config_info{version, loaded_at}`,
  `strangler_addon_failures_total{hook}`.

The request path only bumps plain numbers in dicts (one event loop per process, so no locks);
prometheus-client turns them into metric families when scraped.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from facade.addons import Flow

__all__ = ["BUCKETS", "CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class _Histogram:
    """Bucket counts (not cumulative) and the sum of observations."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*BUCKETS, float("inf")), self.counts):
            running += count
            out.append((floatToGoString(bound), running))
        return out


class _Live(Collector):
    """Families built at scrape time from the plain numbers the addon keeps."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        metrics = self.metrics
        requests = CounterMetricFamily(
            "strangler_requests", "Requests by route, upstream, method and status class.",
            labels=["route", "upstream", "method", "status"],
        )
        for (route, upstream, method, status), count in sorted(metrics.request_counts.items()):
            requests.add_metric([route, upstream, method, _CLASSES.get(status, "none")], count[0])
        yield requests
        errors = CounterMetricFamily("strangler_errors", "Failures by route, upstream and reason.", labels=["route", "upstream", "reason"])
        for key, count in sorted(metrics.error_counts.items()):
            errors.add_metric(list(key), count[0])
        yield errors
        for name, doc, index in (
            ("strangler_request_duration_seconds", "Whole request time through the façade.", 0),
            ("strangler_upstream_duration_seconds", "Time until the upstream's response head.", 1),
        ):
            family = HistogramMetricFamily(name, doc, labels=["route", "upstream"])
            for (route, upstream), pair in sorted(metrics.timings.items()):
                histogram = pair[index]
                family.add_metric([route, upstream], histogram.buckets(), histogram.total)
            yield family
        breaker = GaugeMetricFamily("strangler_breaker_state", "Circuit breaker per upstream: 0 closed, 1 half-open, 2 open.", labels=["upstream"])
        for name, state in sorted(metrics.breaker_states().items()):
            breaker.add_metric([name], state)
        yield breaker
        info = InfoMetricFamily("strangler_config", "The routing table in force.", labels=[])
        version, loaded_at = metrics.config_info()
        info.add_metric([], {"version": version, "loaded_at": loaded_at})
        yield info
        yield from _hold_families(metrics)
        failures = CounterMetricFamily("strangler_addon_failures", "Addon hooks that raised (the request carried on).", labels=["hook"])
        for hook, failed in sorted(metrics.addon_failures().items()):
            failures.add_metric([hook], failed)
        yield failures


def _hold_families(metrics: Metrics) -> Iterable[Any]:
    held = GaugeMetricFamily("strangler_hold_waiting", "Requests waiting in a write hold now.", labels=["route"])
    for route, count in sorted(metrics.held_now().items()):
        held.add_metric([route], count)
    yield held
    outcomes = CounterMetricFamily(
        "strangler_held_requests", "Requests that waited in a write hold, by how the wait ended.", labels=["route", "outcome"]
    )
    for key, count in sorted(metrics.hold_outcomes.items()):
        outcomes.add_metric(list(key), count[0])
    yield outcomes
    ends = CounterMetricFamily("strangler_holds", "Write holds released, by how: cleared or lease expired.", labels=["route", "end"])
    for key, count in sorted(metrics.hold_ends.items()):
        ends.add_metric(list(key), count[0])
    yield ends
    for name, doc, histograms in (
        ("strangler_hold_wait_seconds", "Time a request waited in a write hold.", metrics.hold_waits),
        ("strangler_hold_duration_seconds", "Time a write hold was in force on a route.", metrics.hold_durations),
    ):
        family = HistogramMetricFamily(name, doc, labels=["route"])
        for route, histogram in sorted(histograms.items()):
            family.add_metric([route], histogram.buckets(), histogram.total)
        yield family


class Metrics:
    """Addon counting every flow; `render()` gives the Prometheus text exposition.

    It is also the hold's observer (`hold_waited`, `hold_ended`; see `facade.hold`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.reloads = Counter("strangler_reloads", "Config reloads by result.", ["result"], registry=self.registry)
        for result in ("ok", "error"):
            self.reloads.labels(result)
        self.breaker_states: Callable[[], Mapping[str, int]] = dict
        self.config_info: Callable[[], tuple[str, str]] = lambda: ("", "")
        self.addon_failures: Callable[[], Mapping[str, int]] = dict
        self.request_counts: dict[tuple[str, str, str, int], list[int]] = {}
        self.error_counts: dict[tuple[str, str, str], list[int]] = {}
        self.timings: dict[tuple[str, str], tuple[_Histogram, _Histogram]] = {}
        self.held_now: Callable[[], Mapping[str, int]] = dict
        self.hold_outcomes: dict[tuple[str, str], list[int]] = {}
        self.hold_ends: dict[tuple[str, str], list[int]] = {}
        self.hold_waits: dict[str, _Histogram] = {}
        self.hold_durations: dict[str, _Histogram] = {}
        self.registry.register(_Live(self))

    def request_finished(self, flow: Flow) -> None:
        route = flow.route.id
        upstream = flow.upstream
        method = flow.method if flow.method in _METHODS else "OTHER"
        key = (route, upstream, method, (flow.status or 0) // 100)
        count = self.request_counts.get(key)
        if count is None:
            count = self.request_counts[key] = [0]
        count[0] += 1
        pair = self.timings.get((route, upstream))
        if pair is None:
            pair = self.timings[(route, upstream)] = (_Histogram(), _Histogram())
        if flow.duration is not None:
            pair[0].observe(flow.duration)
        if flow.upstream_duration is not None:
            pair[1].observe(flow.upstream_duration)
        if flow.error is not None:
            error_key = (route, upstream, flow.error)
            errors = self.error_counts.get(error_key)
            if errors is None:
                errors = self.error_counts[error_key] = [0]
            errors[0] += 1

    def hold_waited(self, route: str, seconds: float, released: bool) -> None:
        _bump(self.hold_outcomes, (route, "released" if released else "budget_exceeded"))
        self.hold_waits.setdefault(route, _Histogram()).observe(seconds)

    def hold_ended(self, route: str, seconds: float, end: str) -> None:
        _bump(self.hold_ends, (route, end))
        self.hold_durations.setdefault(route, _Histogram()).observe(seconds)

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _bump(counts: dict[tuple[str, str], list[int]], key: tuple[str, str]) -> None:
    count = counts.get(key)
    if count is None:
        count = counts[key] = [0]
    count[0] += 1
