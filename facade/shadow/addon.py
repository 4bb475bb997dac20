"""The shadow addon: the façade's hooks that pick, capture and hand off requests to mirror.

Hooks run on the request path and only capture (bounded) and hand the finished request to a
sink: the shadow worker process (`facade.shadow.worker`) by default, or the engine on the
façade's own loop. `configure(table)` is called at start and on every reload, so a `shadow:`
added to, changed on or removed from a live façade takes effect.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facade.config import ShadowConfig, ShadowStoreConfig, ShadowWorkerConfig
from facade.shadow.client import ShadowClient
from facade.shadow.engine import ShadowEngine
from facade.shadow.jobs import SAFE_METHODS, RawJob, RouteInfo, ShadowCounters, ShadowSink
from facade.shadow.store import ShadowStore, resolve_url

if TYPE_CHECKING:
    from facade.routing import RouteTable

__all__ = ["ShadowAddon", "sample_bucket"]

def sample_bucket(key: str, salt: str) -> int:
    """0..9999 from a key; salted differently from routing, so shadow samples are not the canary users.

    CRC-32 rather than a cryptographic hash: it runs on every request, and sampling needs spread,
    not secrecy."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass"), zlib.crc32(salt.encode())) % 10_000


@dataclass(slots=True)
class _Tee:
    """Per-flow capture, bounded: the request body up to `max_body`, the response up to `cap`."""

    shadow: bool
    record: bool
    noise: bool
    max_body: int
    cap: int
    request: list[bytes] = field(default_factory=list)
    request_size: int = 0
    too_large: bool = False
    response: list[bytes] = field(default_factory=list)
    response_size: int = 0
    response_truncated: bool = False


@dataclass(slots=True)
class _Plan:
    """A route's shadow settings as the request hook reads them (rebuilt when the route is)."""

    route: Any
    config: ShadowConfig
    counters: ShadowCounters
    sample: float
    methods: frozenset[str]  # empty when nothing is sampled
    to: str
    record: float  # the recording sample in hundredths of a percent, -1 when not recording


class ShadowAddon:
    """Mirrors a sample of each `shadow:` route's requests to its candidate, off the request path.

    The hooks only capture (bounded) and hand the finished request to a sink: by default a
    separate worker process (`facade.shadow.worker`), so mirroring, comparing and storing use
    another core and never the façade's event loop; or, with `inline=True` or an injected store
    or client, the engine on the façade's own loop. Workers send the mirror with
    `X-Strangler-Shadow: 1` and the original Host, ask the primary again for the noise sample,
    compare and store. A full queue, a body over the cap, a slow or failing candidate are
    counted, never felt by the client.
    """

    admin_name = "shadow"

    def __init__(
        self,
        *,
        store: ShadowStore | None = None,
        store_config: ShadowStoreConfig | None = None,
        worker_config: ShadowWorkerConfig | None = None,
        client: ShadowClient | None = None,
        response_cap: int = 4 * 1024 * 1024,
        inline: bool = False,
        sink: ShadowSink | None = None,
        config_dir: Path | None = None,
    ) -> None:
        self.response_cap = response_cap
        self.inline = inline
        self.config_dir = config_dir
        # `store_config` and `worker_config` pin the settings; otherwise `configure` takes them
        # from each routing table (`shadow_store:`, `shadow_worker:`).
        self._store_config = store_config
        self._worker_config = worker_config
        if sink is None and (store is not None or client is not None):
            sink = ShadowEngine(store=store, store_config=store_config, client=client, response_cap=response_cap)
        # An injected sink runs from start to stop; the addon's own is started by `configure`
        # when a route is shadowed, stopped when none is, and rebuilt when its settings change.
        self._fixed = sink
        self.sink: ShadowSink | None = sink
        self._settings: tuple[ShadowStoreConfig, ShadowWorkerConfig] | None = None
        self.active = False  # whether the façade calls the hooks: some route has `shadow:`
        self.local: dict[str, ShadowCounters] = {}
        self.configs: dict[str, ShadowConfig] = {}
        self._infos: dict[int, tuple[Any, RouteInfo]] = {}
        self._plans: dict[int, _Plan] = {}
        self._files: dict[str, str] = {}
        self._running = False

    @classmethod
    def for_config(cls, path: Path) -> ShadowAddon:
        """The addon for the routing file at `path` (an `AddonFactory` for `facade.app.create_app`):
        settings from each table, relative store and traffic paths from the file's directory."""
        return cls(config_dir=path.parent)

    async def start(self) -> None:
        if self._fixed is not None:
            await self._fixed.start()
            self._running = True

    async def stop(self) -> None:
        self._running = False
        sink, self.sink = self.sink, self._fixed
        if sink is not None:
            await sink.stop()
        self._settings = None

    async def configure(self, table: RouteTable) -> None:
        """Take a new routing table (at start and after every successful reload): start the
        worker when a route gains `shadow:`, stop it when none has it, restart it when
        `shadow_store:` or `shadow_worker:` changed, and forget the numbers of routes no longer
        shadowed."""
        config = table.config
        shadowed = {route.id: route.shadow for route in config.routes if route.shadow is not None}
        for route_id in set(self.local) - set(shadowed):
            del self.local[route_id]
            del self.configs[route_id]
        self._plans.clear()
        self._infos.clear()
        self.active = bool(shadowed)
        if self._fixed is not None:
            return
        store_config = self._store_config or config.shadow_store
        store_config = store_config.model_copy(update={"url": resolve_url(store_config.url, self.config_dir)})
        settings = (store_config, self._worker_config or config.shadow_worker)
        if self.sink is not None and (not shadowed or settings != self._settings):
            self._running = False
            sink, self.sink = self.sink, None
            await sink.stop()
        if shadowed and self.sink is None:
            self.sink = self._make_sink(*settings)
            self._settings = settings
            await self.sink.start()
            self._running = True

    def _make_sink(self, store_config: ShadowStoreConfig, worker_config: ShadowWorkerConfig) -> ShadowSink:
        if self.inline:
            return ShadowEngine(store_config=store_config, response_cap=self.response_cap)
        # Imported here: `python -m facade.shadow.worker` must not find itself imported already.
        from facade.shadow.worker import ProcessSink

        return ProcessSink(store_config=store_config, response_cap=self.response_cap, cpu_budget=worker_config.cpu)

    def snapshot(self) -> dict[str, Any]:
        """Live numbers for `/_strangler/shadow`: the hooks' counts merged with the workers'."""
        sink = self.sink
        remote = sink.counters() if sink is not None else {}
        routes = {}
        for route_id, local in self.local.items():
            config = self.configs[route_id]
            merged: dict[str, Any] = {"to": config.to, "sample": config.sample, "queue": config.queue, "inflight": config.inflight, "queued": 0}
            merged.update(ShadowCounters().as_dict())
            worker = remote.get(route_id, {})
            for key, value in worker.items():
                if key != "dropped":
                    merged[key] = value
            mine = local.as_dict()
            for key in ("sampled", "recorded", "record_dropped", "skipped_writes", "skipped_primary_failed"):
                merged[key] = mine[key]
            theirs = worker.get("dropped", {})
            merged["dropped"] = {
                "queue_full": mine["dropped"]["queue_full"] + theirs.get("queue_full", 0),
                "body_too_large": mine["dropped"]["body_too_large"],
                "cpu_budget": theirs.get("cpu_budget", 0),
            }
            routes[route_id] = merged
        worker = getattr(sink, "worker_stats", None)
        return {"routes": routes, "store": sink.store_stats() if sink is not None else None, "worker": worker() if worker else None}

    def collect(self) -> Iterable[Any]:
        """Prometheus collector (register it on the façade's registry): the live numbers by route."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        events = CounterMetricFamily("strangler_shadow_events", "Shadowed requests by route and event.", labels=["route", "event"])
        queued = GaugeMetricFamily("strangler_shadow_queued", "Shadow jobs waiting in the route's queue.", labels=["route"])
        for route_id, numbers in self.snapshot()["routes"].items():
            for event in ("sampled", "sent", "compared", "matched", "mismatched", "noise_probes", "recorded", "record_dropped",
                          "record_lost", "timed_out", "failed", "compare_errors", "skipped_writes"):
                events.add_metric([route_id, event], numbers.get(event, 0))
            for reason, n in numbers["dropped"].items():
                events.add_metric([route_id, "dropped_" + reason], n)
            queued.add_metric([route_id], numbers.get("queued", 0))
        yield events
        yield queued

    def _local(self, route_id: str, config: ShadowConfig) -> ShadowCounters:
        counters = self.local.get(route_id)
        if counters is None:
            counters = self.local[route_id] = ShadowCounters()
        self.configs[route_id] = config
        return counters

    # hooks -------------------------------------------------------------------------------------

    def _plan(self, route: Any, config: ShadowConfig) -> _Plan:
        plan = _Plan(route, config, self._local(route.id, config), config.sample,
                     frozenset(config.methods) if config.sample > 0 else frozenset(), config.to,
                     config.record.sample * 100 if config.record is not None else -1.0)
        self._plans[id(route)] = plan
        return plan

    def request_started(self, flow: Any) -> None:
        # Runs for every request of a shadowed route, also while the worker sheds load: the
        # common path is a few attribute reads and one counter.
        route = flow.route
        config: ShadowConfig | None = route.config.shadow
        if config is None or not self._running:
            return
        plan = self._plans.get(id(route))
        if plan is None or plan.route is not route:
            plan = self._plan(route, config)
        method = flow.method
        shadow = method in plan.methods and flow.upstream != plan.to
        if shadow and plan.sample < 100:
            shadow = sample_bucket(_user_key(flow) or flow.request_id, route.id) < plan.sample * 100
        if shadow and method not in SAFE_METHODS:
            upstream = flow.table.upstreams.get(plan.to)
            if not (config.allow_writes or getattr(upstream, "sandbox", False)):
                plan.counters.skipped_writes += 1
                shadow = False
        record = plan.record >= 0 and sample_bucket(flow.request_id, "record:" + route.id) < plan.record
        if shadow:
            plan.counters.sampled += 1
            if self.sink is None or self.sink.refuse(route.id):
                # The worker is over its CPU budget or this route's queue is filling: drop now,
                # so the request costs no capture at all.
                shadow = False
        if not shadow and not record:
            return
        noise = shadow and method in SAFE_METHODS and config.noise_sample > 0 and (
            config.noise_sample >= 100 or sample_bucket(flow.request_id, "noise:" + route.id) < config.noise_sample * 100
        )
        flow.state["shadow"] = _Tee(shadow=shadow, record=record, noise=noise, max_body=config.max_body, cap=self.response_cap)

    def request_chunk(self, flow: Any, data: bytes) -> None:
        tee: _Tee | None = flow.state.get("shadow")
        if tee is None or tee.too_large or not data:
            return
        if tee.request_size + len(data) > tee.max_body:
            tee.too_large = True
            tee.request.clear()  # never hold more than the cap
            return
        tee.request.append(data)
        tee.request_size += len(data)

    def response_chunk(self, flow: Any, data: bytes) -> None:
        tee: _Tee | None = flow.state.get("shadow")
        if tee is None or tee.response_truncated or not data:
            return
        room = tee.cap - tee.response_size
        if len(data) > room:
            tee.response.append(data[:room])
            tee.response_size = tee.cap
            tee.response_truncated = True
            return
        tee.response.append(data)
        tee.response_size += len(data)

    def request_finished(self, flow: Any) -> None:
        tee: _Tee | None = flow.state.pop("shadow", None)
        sink = self.sink
        if tee is None or sink is None:
            return
        route = flow.route
        config: ShadowConfig = route.config.shadow
        counters = self._local(route.id, config)
        if flow.error is not None or flow.status is None:
            counters.skipped_primary_failed += tee.shadow
            return
        response_body = b"".join(tee.response)
        if tee.record:
            self._record(sink, route, config, flow, tee, response_body)
        if not tee.shadow:
            return
        if tee.too_large:
            counters.dropped_body_too_large += 1
            sink.drop(route.id, "body_too_large")
            return
        info = self._infos.get(id(route))
        if info is None or info[0] is not route:
            upstream = flow.table.upstreams[config.to]
            info = (route, RouteInfo(route.id, config, route.segments, upstream.url))
            self._infos[id(route)] = info
        raw: RawJob = (
            flow.method,
            flow.raw_path,
            flow.query_string,
            flow.request_headers,
            b"".join(tee.request),
            flow.status,
            flow.response_headers or [],
            response_body,
            tee.response_truncated,
            flow.duration,
            tee.noise,
            flow.table.upstreams[flow.upstream].url,
        )
        sink.submit(info[1], raw)

    def _record(self, sink: ShadowSink, route: Any, config: ShadowConfig, flow: Any, tee: _Tee, response_body: bytes) -> None:
        # Only captured here: redaction (parsing and rewriting the bodies) runs in the sink, off
        # the façade's event loop when the sink is the worker process.
        assert config.record is not None
        path = _text_of(flow.raw_path)
        captured = {
            "ts": time.time(),
            "route": route.id,
            "endpoint": route.endpoint(flow.method, path),
            "method": flow.method,
            "path": path,
            "query": _text_of(flow.query_string),
            "headers": [(_text_of(k), _text_of(v)) for k, v in flow.request_headers],
            "body": b"".join(tee.request),
            "body_truncated": tee.too_large,
            "status": flow.status,
            "response_headers": [(_text_of(k).lower(), _text_of(v)) for k, v in (flow.response_headers or ())],
            "response_body": response_body,
            "response_truncated": tee.response_truncated,
            "duration_ms": flow.duration * 1000 if flow.duration is not None else None,
        }
        counters = self.local[route.id]
        if sink.record(self._file(config.record.file), config.redact.headers, config.redact.body_fields, captured):
            counters.recorded += 1
        else:
            counters.record_dropped += 1


    def _file(self, name: str) -> str:
        # A relative traffic file is taken from routing.yaml's directory, as the store is.
        path = self._files.get(name)
        if path is None:
            path = self._files[name] = str(self.config_dir / name) if self.config_dir is not None else name
        return path


def _user_key(flow: Any) -> str | None:
    """Who the request is from, for sampling by user: the route's sticky key, else the assignment
    cookie, else the client's address; never the request id, which is random (and the client's to
    choose). So a user is in or out of a route's sample on every request, also on a route with one
    upstream and no sticky source (the usual route before a shift)."""
    if flow.sticky_key is not None:
        return str(flow.sticky_key)
    prefix = flow.table.config.assignment.cookie.encode("latin-1") + b"="
    for name, value in flow.request_headers:
        if name == b"cookie":
            for part in value.split(b";"):
                part = part.strip()
                if part.startswith(prefix) and len(part) > len(prefix):
                    return part[len(prefix):].strip(b'"').decode("latin-1")
    client = flow.client
    return client[0] if client else None


def _text_of(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else value
