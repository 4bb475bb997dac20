"""Prometheus metrics of the façade, as an addon over its own registry.

- `strangler_requests_total{route, upstream, method, status}`: status as a class (`2xx`, ...).
- `strangler_errors_total{route, upstream, reason}`: failures the façade saw (timeouts, resets,
  aborted responses, open breakers, clients gone).
- `strangler_request_duration_seconds{route, upstream}`: whole request, histogram.
- `strangler_upstream_duration_seconds{route, upstream}`: until the upstream's response head.
- `strangler_breaker_state{upstream}`: 0 closed, 1 half-open, 2 open (read at scrape time).
- `strangler_reloads_total{result}`, `strangler_config_info{version}`, `strangler_addon_failures_total{hook}`.

Label children are cached per key, so a request costs a few dict lookups and increments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from facade.addons import Flow

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class _Live(Collector):
    """Values read when scraped: breaker states, config version, addon failures."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        breaker = GaugeMetricFamily("strangler_breaker_state", "Circuit breaker per upstream: 0 closed, 1 half-open, 2 open.", labels=["upstream"])
        for name, state in sorted(self.metrics.breaker_states().items()):
            breaker.add_metric([name], state)
        yield breaker
        info = InfoMetricFamily("strangler_config", "The routing table in force.", labels=[])
        version, loaded_at = self.metrics.config_info()
        info.add_metric([], {"version": version, "loaded_at": loaded_at})
        yield info
        failures = CounterMetricFamily("strangler_addon_failures", "Addon hooks that raised (the request carried on).", labels=["hook"])
        for hook, count in sorted(self.metrics.addon_failures().items()):
            failures.add_metric([hook], count)
        yield failures


class Metrics:
    """Addon counting every flow; `render()` gives the Prometheus text exposition."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "strangler_requests", "Requests by route, upstream, method and status class.",
            ["route", "upstream", "method", "status"], registry=self.registry,
        )
        self.errors = Counter(
            "strangler_errors", "Failures by route, upstream and reason.", ["route", "upstream", "reason"], registry=self.registry
        )
        self.duration = Histogram(
            "strangler_request_duration_seconds", "Whole request time through the façade.",
            ["route", "upstream"], buckets=_BUCKETS, registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "strangler_upstream_duration_seconds", "Time until the upstream's response head.",
            ["route", "upstream"], buckets=_BUCKETS, registry=self.registry,
        )
        self.reloads = Counter("strangler_reloads", "Config reloads by result.", ["result"], registry=self.registry)
        for result in ("ok", "error"):
            self.reloads.labels(result)
        self.breaker_states: Callable[[], Mapping[str, int]] = dict
        self.config_info: Callable[[], tuple[str, str]] = lambda: ("", "")
        self.addon_failures: Callable[[], Mapping[str, int]] = dict
        self.registry.register(_Live(self))
        self._requests: dict[tuple[str, str, str, int], Any] = {}
        self._timings: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._errors: dict[tuple[str, str, str], Any] = {}

    def request_finished(self, flow: Flow) -> None:
        route = flow.route.id
        upstream = flow.upstream
        status = flow.status or 0
        method = flow.method if flow.method in _METHODS else "OTHER"
        key = (route, upstream, method, status // 100)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(route, upstream, method, _CLASSES.get(status // 100, "none"))
        child.inc()
        timings = self._timings.get((route, upstream))
        if timings is None:
            timings = self._timings[(route, upstream)] = (
                self.duration.labels(route, upstream), self.upstream_duration.labels(route, upstream)
            )
        if flow.duration is not None:
            timings[0].observe(flow.duration)
        if flow.upstream_duration is not None:
            timings[1].observe(flow.upstream_duration)
        if flow.error is not None:
            error_key = (route, upstream, flow.error)
            error = self._errors.get(error_key)
            if error is None:
                error = self._errors[error_key] = self.errors.labels(route, upstream, flow.error)
            error.inc()

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
