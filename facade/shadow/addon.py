"""Shadow traffic: judging a candidate's answer against the primary's, and (below) the addon.

`judge` is the pure core shared by live shadowing and offline replay: it compares the primary's
reply with the candidate's (and, for the noise sample, with the primary's second reply), updates
the noise model, redacts, and returns the `ComparisonRecord` to store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from facade.client import H1Client, Upstream
from facade.shadow.compare import CompareRules, Comparison, Normalizer, Reply, compare, compare_all
from facade.config import CompareConfig, RedactConfig, ShadowConfig, ShadowStoreConfig, ShadowWorkerConfig, UpstreamConfig
from facade.errors import UpstreamError, UpstreamTimeout
from facade.exceptions import FacadeError
from facade.shadow.noise import NoiseModel, NoiseThresholds
from facade.shadow.recorder import Recordings
from facade.shadow.redact import Redactor, scrub_urls
from facade.routing import canonical_path
from facade.shadow.store import ComparisonRecord, DiffRecord, DropRecord, SampleRecord, ShadowStore, StoreWriter

__all__ = [
    "H1ShadowClient",
    "RouteRules",
    "ShadowAddon",
    "ShadowClient",
    "ShadowCounters",
    "ShadowEngine",
    "RawJob",
    "RouteInfo",
    "ShadowJob",
    "ShadowSink",
    "build_job",
    "compare_pair",
    "failure_record",
    "judge",
    "route_rules",
    "sample_bucket",
]

log = logging.getLogger("strangler.shadow")

SAMPLE_BODY_CAP = 16 * 1024


@dataclass(frozen=True, slots=True)
class RouteRules:
    """Everything `judge` needs from a route's shadow configuration, compiled once."""

    compare: CompareRules
    thresholds: NoiseThresholds
    redactor: Redactor


def route_rules(compare_config: CompareConfig | None = None, redact_config: RedactConfig | None = None, *, max_body: int = 64 * 1024) -> RouteRules:
    """Compile a route's `shadow.compare` and `shadow.redact` configuration."""
    c = compare_config or CompareConfig()
    r = redact_config or RedactConfig()
    return RouteRules(
        compare=CompareRules(
            headers=c.headers,
            ignore=c.ignore,
            normalize=tuple(Normalizer(n.regex, n.replace, n.path) for n in c.normalize),
            tolerances=dict(c.tolerance),
            unordered=c.unordered,
            array_keys=dict(c.array_keys),
        ),
        thresholds=NoiseThresholds(relative=c.relative_threshold, absolute=c.absolute_threshold),
        redactor=Redactor.build(r.headers, r.body_fields, max_body),
    )


def compare_pair(primary: Reply, candidate: Reply, second: Reply | None, rules: RouteRules) -> tuple[Comparison, Comparison | None]:
    """Primary vs candidate, and primary vs its second answer (the noise probe) when there is one."""
    if second is None:
        return compare(primary, candidate, rules.compare), None
    result, noise = compare_all(primary, (candidate, second), rules.compare)
    return result, noise


def _text(redactor: Redactor, reply: Reply) -> str:
    body, cut = redactor.body(reply.body, reply.headers.get("content-type", ""))
    body = body[:SAMPLE_BODY_CAP]
    return body.decode("utf-8", "replace") + (" …(truncated)" if cut or reply.truncated or len(reply.body) > SAMPLE_BODY_CAP else "")


def judge(
    *,
    route: str,
    endpoint: str,
    request_line: str,
    primary: Reply,
    candidate: Reply,
    second: Reply | None,
    rules: RouteRules,
    model: NoiseModel,
    primary_ms: float | None,
    candidate_ms: float | None,
    wants_sample: Callable[[str, str], bool] = lambda endpoint, field: True,
    source: str = "live",
    ts: float | None = None,
    compared: tuple[Comparison, Comparison | None] | None = None,
) -> ComparisonRecord:
    """Compare one shadowed exchange; `request_line` must already be redacted.

    `compared` passes in `compare_pair`'s result when it was computed elsewhere (a thread).
    """
    result, noise = compared if compared is not None else compare_pair(primary, candidate, second, rules)
    candidate_fields = result.fields()
    noise_fields = noise.fields() if noise is not None else frozenset()
    model.observe(endpoint, candidate_fields, noise_fields if noise is not None else None)
    verdict = model.verdict(endpoint, candidate_fields, noise_fields)
    redacted = rules.redactor.differences(result.differences)
    diffs = [DiffRecord(d.path, d.field, d.kind.value) for d in redacted]
    if noise is not None:
        diffs += [DiffRecord(d.path, d.field, d.kind.value, "noise") for d in rules.redactor.differences(noise.differences)]
    samples = []
    seen: set[str] = set()
    bodies: tuple[str, str] | None = None
    for d in redacted:
        if d.field in seen or not wants_sample(endpoint, d.field):
            continue
        seen.add(d.field)
        if bodies is None:
            bodies = (_text(rules.redactor, primary), _text(rules.redactor, candidate))
        samples.append(SampleRecord(d.field, d.kind.value, d.path, request_line, d.primary, d.candidate, bodies[0], bodies[1]))
    return ComparisonRecord(
        ts=time.time() if ts is None else ts,
        route=route,
        endpoint=endpoint,
        primary_status=primary.status,
        candidate_status=candidate.status,
        primary_ms=primary_ms,
        candidate_ms=candidate_ms,
        match=result.matches,
        match_denoised=verdict.matches,
        noise_probe=noise is not None,
        source=source,
        differences=tuple(diffs),
        samples=tuple(samples),
    )


def failure_record(
    *, route: str, endpoint: str, primary_status: int, primary_ms: float | None, outcome: str, error: str, source: str = "live", ts: float | None = None
) -> ComparisonRecord:
    """A shadow that produced no candidate answer (`outcome` is `timeout` or `failed`). The error is
    stored without the query of any URL it quotes: a query can carry a token."""
    return ComparisonRecord(
        ts=time.time() if ts is None else ts,
        route=route,
        endpoint=endpoint,
        primary_status=primary_status,
        candidate_status=None,
        primary_ms=primary_ms,
        candidate_ms=None,
        match=False,
        match_denoised=False,
        outcome=outcome,
        source=source,
        error=scrub_urls(error)[:500],
    )


# --- the addon ---------------------------------------------------------------------------------

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length",
     b"proxy-authenticate", b"proxy-authorization"}
)
SHADOW_HEADER = (b"x-strangler-shadow", b"1")
INLINE_COMPARE_BYTES = 64 * 1024  # larger bodies are compared on a worker thread


class ShadowClient(Protocol):
    """Sends one mirrored request; the only network boundary of the shadow addon."""

    async def send(self, method: str, url: str, headers: Sequence[tuple[bytes, bytes]], body: bytes, *, timeout: float, cap: int) -> Reply:
        """The answer, its body cut at `cap` bytes (`Reply.truncated`); raises TimeoutError on timeout."""
        ...

    async def close(self) -> None: ...


class H1ShadowClient:
    """`ShadowClient` over the façade's own HTTP/1.1 client (`facade.client.H1Client`).

    Its pools are its own, one per scheme and host, so shadow traffic never shares the primary's
    connections. The request keeps the client's Host (the mirrored headers carry it), the
    response is read up to `cap` bytes (a truncated connection is closed, not reused), and the
    whole exchange is bounded by `timeout`. Per request it costs well under half of aiohttp's
    client, which is most of what a shadow worker spends.
    """

    def __init__(self, *, limit: int = 200) -> None:
        self._limit = limit
        self._client = H1Client()
        self._upstreams: dict[tuple[str, float], Upstream] = {}

    def _upstream(self, base: str, timeout: float) -> Upstream:
        upstream = self._upstreams.get((base, timeout))
        if upstream is None:
            config = UpstreamConfig(name=base, url=base, connect_timeout=min(timeout, 5.0), timeout=timeout, pool=self._limit)
            upstream = self._upstreams[(base, timeout)] = Upstream(base, config, host_header=False)
        return upstream

    async def send(self, method: str, url: str, headers: Sequence[tuple[bytes, bytes]], body: bytes, *, timeout: float, cap: int) -> Reply:
        scheme, _, rest = url.partition("://")
        netloc, slash, path = rest.partition("/")
        target = (slash + path or "/").encode("latin-1")
        pairs = list(headers)
        if not any(k == b"host" for k, _ in pairs):
            pairs.insert(0, (b"host", netloc.encode("idna")))
        try:
            async with asyncio.timeout(timeout):
                response = await self._client.request(self._upstream(f"{scheme}://{netloc}", timeout), method, target, pairs, body or None)
                chunks: list[bytes] = []
                size = 0
                truncated = False
                try:
                    while chunk := await response.read():
                        if size + len(chunk) > cap:
                            chunks.append(chunk[: cap - size])
                            truncated = True
                            break
                        chunks.append(chunk)
                        size += len(chunk)
                finally:
                    response.close(reuse=not truncated)
        except UpstreamTimeout as exc:
            raise TimeoutError(str(exc)) from exc
        except UpstreamError as exc:
            raise ShadowSendError(scrub_urls(f"{method} {url}: {exc}")) from exc
        head = _header_map([(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers])
        return Reply(response.status, head, b"".join(chunks), truncated)

    async def close(self) -> None:
        await self._client.aclose()


class ShadowSendError(FacadeError):
    """A mirrored request failed (connection refused, reset, protocol error)."""


def decoded(reply: Reply) -> Reply:
    """The reply with a gzip/deflate body decoded, so both sides compare on content."""
    encoding = reply.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("gzip", "deflate") or reply.truncated:
        return reply
    try:
        body = zlib.decompress(reply.body, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    except zlib.error:
        return reply
    headers = {k: v for k, v in reply.headers.items() if k != "content-encoding"}
    return Reply(reply.status, headers, body, False)


def sample_bucket(key: str, salt: str) -> int:
    """0..9999 from a key; salted differently from routing, so shadow samples are not the canary users.

    CRC-32 rather than a cryptographic hash: it runs on every request, and sampling needs spread,
    not secrecy."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass"), zlib.crc32(salt.encode())) % 10_000


@dataclass
class ShadowCounters:
    """Live numbers per route, as shown at `/_strangler/shadow`."""

    sampled: int = 0
    sent: int = 0
    compared: int = 0
    matched: int = 0
    mismatched: int = 0
    noise_probes: int = 0
    recorded: int = 0
    record_dropped: int = 0
    record_lost: int = 0
    dropped_queue_full: int = 0
    dropped_body_too_large: int = 0
    dropped_cpu_budget: int = 0
    skipped_writes: int = 0
    skipped_primary_failed: int = 0
    timed_out: int = 0
    failed: int = 0
    compare_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sampled": self.sampled,
            "sent": self.sent,
            "compared": self.compared,
            "matched": self.matched,
            "mismatched": self.mismatched,
            "noise_probes": self.noise_probes,
            "recorded": self.recorded,
            "record_dropped": self.record_dropped,
            "record_lost": self.record_lost,
            "dropped": {
                "queue_full": self.dropped_queue_full,
                "body_too_large": self.dropped_body_too_large,
                "cpu_budget": self.dropped_cpu_budget,
            },
            "skipped_writes": self.skipped_writes,
            "skipped_primary_failed": self.skipped_primary_failed,
            "timed_out": self.timed_out,
            "failed": self.failed,
            "compare_errors": self.compare_errors,
        }


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


@dataclass(slots=True)
class ShadowJob:
    """Everything a worker needs to mirror one request and judge the answer (picklable)."""

    route: str
    endpoint: str
    method: str
    request_line: str
    headers: list[tuple[bytes, bytes]]  # lower-case names, as sent
    body: bytes
    candidate_url: str
    primary_url: str
    primary: Reply
    primary_ms: float | None
    noise: bool


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """What the workers need to know about a shadowed route (sent once per route version)."""

    route_id: str
    config: ShadowConfig
    segments: tuple[str, ...]
    candidate_base: str


RawJob = tuple[str, bytes, bytes, list[tuple[bytes, bytes]], bytes, int, list[tuple[bytes, bytes]], bytes, bool, "float | None", bool, str]
"""(method, raw path, query, request headers, request body, status, response headers, response
body, response truncated, duration s, noise probe, primary base URL): only what the hooks have,
so handing a request over costs a tuple and a pickle on the façade's loop."""


def build_job(info: RouteInfo, raw: RawJob) -> ShadowJob:
    """Expand a hook's raw tuple into a job (decoding, canonical endpoint, redacted request line)."""
    method, raw_path, raw_query, req_headers, body, status, resp_headers, resp_body, truncated, duration, noise, primary_base = raw
    path = raw_path.decode("latin-1")
    query = raw_query.decode("latin-1")
    target = path + ("?" + query if query else "")
    # The façade's header names are lower-case already; the pairs stay bytes to the wire.
    headers = [(k, v) for k, v in req_headers if k not in HOP_BY_HOP and k != SHADOW_HEADER[0]]
    headers.append(SHADOW_HEADER)
    redacted_query = Redactor.build(body_fields=info.config.redact.body_fields).query(query) if query else ""
    return ShadowJob(
        route=info.route_id,
        endpoint=f"{method} {canonical_path(info.segments, path)}",
        method=method,
        request_line=f"{method} {path}" + ("?" + redacted_query if query else ""),
        headers=headers,
        body=body,
        candidate_url=info.candidate_base.rstrip("/") + target,
        primary_url=primary_base.rstrip("/") + target,
        primary=Reply(status, _header_map([(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in resp_headers]), resp_body, truncated),
        primary_ms=duration * 1000 if duration is not None else None,
        noise=noise,
    )


class _RouteShadow:
    """One route's bounded queue and its worker tasks (the in-flight cap)."""

    def __init__(self, route_id: str, config: ShadowConfig, rules: RouteRules) -> None:
        self.route_id = route_id
        self.config = config
        self.rules = rules
        self.queue: asyncio.Queue[ShadowJob] = asyncio.Queue(maxsize=config.queue)
        self.model = NoiseModel(rules.thresholds)
        self.counters = ShadowCounters()
        self.workers: list[asyncio.Task[None]] = []


class ShadowEngine:
    """Queues, workers, comparison and storage for shadowed requests of every route.

    Runs inside the façade (inline) or in the shadow worker process (`facade.shadow.worker`).
    `submit` never blocks: a full route queue is counted as a `queue_full` drop.
    """

    def __init__(
        self,
        *,
        store: ShadowStore | None = None,
        store_config: ShadowStoreConfig | None = None,
        client: ShadowClient | None = None,
        response_cap: int = 4 * 1024 * 1024,
    ) -> None:
        self.store_config = store_config or ShadowStoreConfig()
        self.store = store
        self.client: ShadowClient = client or H1ShadowClient()
        self.response_cap = response_cap
        self.writer: StoreWriter | None = None
        self.recordings = Recordings(on_lost=self._changed)
        self.routes: dict[str, _RouteShadow] = {}
        self._drops: collections.Counter[tuple[str, str]] = collections.Counter()
        self._open = asyncio.Event()
        self._open.set()
        self.on_change: Callable[[], None] | None = None  # called when a job is done or a batch stored

    async def start(self) -> None:
        self.store = self.store or ShadowStore.from_config(self.store_config)
        self.writer = StoreWriter(self.store, drops_source=self._take_drops, on_written=self._changed)
        await self.writer.start()

    async def stop(self) -> None:
        for rs in self.routes.values():
            for task in rs.workers:
                task.cancel()
        for rs in self.routes.values():
            for task in rs.workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            rs.workers.clear()
        await self.recordings.stop()
        if self.writer is not None:
            await self.writer.stop()
        await self.client.close()

    def route(self, route_id: str, config: ShadowConfig) -> _RouteShadow:
        rs = self.routes.get(route_id)
        if rs is None or (rs.config is not config and rs.config != config):
            # New route, or a reloaded config: new rules and queue; the old workers stop.
            old = rs
            rs = _RouteShadow(route_id, config, route_rules(config.compare, config.redact, max_body=self.store_config.max_body))
            if old is not None:
                rs.counters = old.counters
                if old.config.compare == config.compare:
                    rs.model = old.model
                for task in old.workers:
                    task.cancel()
            loop = asyncio.get_running_loop()
            rs.workers = [loop.create_task(self._work(rs), name=f"shadow-{route_id}-{i}") for i in range(config.inflight)]
            self.routes[route_id] = rs
        return rs

    def submit(self, info: RouteInfo, raw: RawJob) -> None:
        rs = self.route(info.route_id, info.config)
        if rs.queue.full():
            self.drop(info.route_id, "queue_full")
            return
        rs.queue.put_nowait(build_job(info, raw))

    def record(self, file: str, redact_headers: Sequence[str], redact_fields: Sequence[str], captured: dict[str, Any]) -> bool:
        return self.recordings.add(file, redact_headers, redact_fields, captured)

    def drop(self, route_id: str, reason: str, count: int = 1, *, counted: bool = False) -> None:
        """Count a drop and keep it for the store; `counted`: the caller's counters have it already."""
        rs = self.routes.get(route_id)
        if rs is not None and not counted:
            if reason == "queue_full":
                rs.counters.dropped_queue_full += count
            elif reason == "body_too_large":
                rs.counters.dropped_body_too_large += count
            elif reason == "cpu_budget":
                rs.counters.dropped_cpu_budget += count
        self._drops[(route_id, reason)] += count
        if self.writer is not None:
            self.writer.poke()

    def refuse(self, route_id: str) -> bool:
        return False  # a full queue is seen at `submit`

    def pause(self) -> None:
        """Start no new shadow until `resume` (jobs wait in their queues; in-flight ones finish)."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def _take_drops(self) -> list[DropRecord]:
        now = time.time()
        drops = [DropRecord(now, route, reason, n) for (route, reason), n in self._drops.items()]
        self._drops.clear()
        return drops

    def counters(self) -> dict[str, dict[str, Any]]:
        out = {route_id: {"queued": rs.queue.qsize(), **rs.counters.as_dict()} for route_id, rs in self.routes.items()}
        for route_id, lost in self.recordings.lost_by_route().items():
            out.setdefault(route_id, {"queued": 0, **ShadowCounters().as_dict()})["record_lost"] = lost
        return out

    def store_stats(self) -> dict[str, int] | None:
        w = self.writer
        return {"written": w.written, "pending": w.pending, "lost": w.lost, "failed": w.failed} if w else None

    async def _work(self, rs: _RouteShadow) -> None:
        while True:
            if not self._open.is_set():
                await self._open.wait()
            job = await rs.queue.get()
            try:
                await self._shadow(rs, job)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failing comparison never reaches a client
                rs.counters.compare_errors += 1
                log.exception("shadow comparison failed on route %s for %s", rs.route_id, job.request_line)
            finally:
                rs.queue.task_done()
                self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _shadow(self, rs: _RouteShadow, job: ShadowJob) -> None:
        timeout = rs.config.timeout
        cap = self.response_cap
        candidate_call = self._timed(self.client.send(job.method, job.candidate_url, job.headers, job.body, timeout=timeout, cap=cap))
        rs.counters.sent += 1
        second: Reply | BaseException | None = None
        if job.noise:
            rs.counters.noise_probes += 1
            second_call = self._timed(self.client.send(job.method, job.primary_url, job.headers, job.body, timeout=timeout, cap=cap))
            (candidate, candidate_ms), (second, _) = await asyncio.gather(candidate_call, second_call)
        else:
            candidate, candidate_ms = await candidate_call
        if isinstance(candidate, BaseException):
            outcome = "timeout" if isinstance(candidate, TimeoutError) else "failed"
            if outcome == "timeout":
                rs.counters.timed_out += 1
            else:
                rs.counters.failed += 1
            self._submit(failure_record(route=job.route, endpoint=job.endpoint, primary_status=job.primary.status, primary_ms=job.primary_ms, outcome=outcome, error=repr(candidate)))
            return
        second_reply = decoded(second) if isinstance(second, Reply) else None
        primary = decoded(job.primary)
        candidate = decoded(candidate)
        if len(primary.body) + len(candidate.body) > INLINE_COMPARE_BYTES:
            compared = await asyncio.to_thread(compare_pair, primary, candidate, second_reply, rs.rules)
        else:
            compared = compare_pair(primary, candidate, second_reply, rs.rules)
        store = self.store
        record = judge(
            route=job.route,
            endpoint=job.endpoint,
            request_line=job.request_line,
            primary=primary,
            candidate=candidate,
            second=second_reply,
            rules=rs.rules,
            model=rs.model,
            primary_ms=job.primary_ms,
            candidate_ms=candidate_ms,
            wants_sample=store.wants_sample if store is not None else (lambda e, f: True),
            compared=compared,
        )
        rs.counters.compared += 1
        if record.match_denoised:
            rs.counters.matched += 1
        else:
            rs.counters.mismatched += 1
        self._submit(record)

    async def _timed(self, call: Awaitable[Reply]) -> tuple[Reply | BaseException, float | None]:
        t0 = time.perf_counter()
        try:
            reply = await call
        except (TimeoutError, ShadowSendError, OSError) as exc:
            return exc, None
        return reply, (time.perf_counter() - t0) * 1000

    def _submit(self, record: ComparisonRecord) -> None:
        if self.writer is not None:
            self.writer.submit(record)


class ShadowSink(Protocol):
    """Where the hooks hand finished requests: the engine in-process, or the worker process."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def submit(self, info: RouteInfo, raw: RawJob) -> None: ...

    def drop(self, route_id: str, reason: str) -> None: ...

    def record(self, file: str, redact_headers: Sequence[str], redact_fields: Sequence[str], captured: dict[str, Any]) -> bool:
        """Redact one captured exchange and append it to `file` (`facade.shadow.recorder.Recordings.add`);
        False when it cannot be taken (the worker is gone or far behind)."""
        ...

    def refuse(self, route_id: str) -> bool:
        """Whether a request just sampled for `route_id` is dropped at once (counted by the sink),
        before anything of it is captured."""
        ...

    def counters(self) -> dict[str, dict[str, Any]]: ...

    def store_stats(self) -> dict[str, int] | None: ...


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
    ) -> None:
        self.response_cap = response_cap
        if sink is None:
            if inline or store is not None or client is not None:
                sink = ShadowEngine(store=store, store_config=store_config, client=client, response_cap=response_cap)
            else:
                from facade.shadow.worker import ProcessSink

                sink = ProcessSink(
                    store_config=store_config or ShadowStoreConfig(),
                    response_cap=response_cap,
                    cpu_budget=(worker_config or ShadowWorkerConfig()).cpu,
                )
        self.sink: ShadowSink = sink
        self.local: dict[str, ShadowCounters] = {}
        self.configs: dict[str, ShadowConfig] = {}
        self._infos: dict[int, tuple[Any, RouteInfo]] = {}
        self._plans: dict[int, _Plan] = {}
        self._running = False

    async def start(self) -> None:
        await self.sink.start()
        self._running = True

    async def stop(self) -> None:
        self._running = False
        await self.sink.stop()

    def snapshot(self) -> dict[str, Any]:
        """Live numbers for `/_strangler/shadow`: the hooks' counts merged with the workers'."""
        remote = self.sink.counters()
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
        worker = getattr(self.sink, "worker_stats", None)
        return {"routes": routes, "store": self.sink.store_stats(), "worker": worker() if worker else None}

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
            shadow = sample_bucket(flow.sticky_key or flow.request_id, route.id) < plan.sample * 100
        if shadow and method not in SAFE_METHODS:
            upstream = flow.table.upstreams.get(plan.to)
            if not (config.allow_writes or getattr(upstream, "sandbox", False)):
                plan.counters.skipped_writes += 1
                shadow = False
        record = plan.record >= 0 and sample_bucket(flow.request_id, "record:" + route.id) < plan.record
        if shadow:
            plan.counters.sampled += 1
            if self.sink.refuse(route.id):
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
        if tee is None:
            return
        route = flow.route
        config: ShadowConfig = route.config.shadow
        counters = self._local(route.id, config)
        if flow.error is not None or flow.status is None:
            counters.skipped_primary_failed += tee.shadow
            return
        response_body = b"".join(tee.response)
        if tee.record:
            self._record(route, config, flow, tee, response_body)
        if not tee.shadow:
            return
        if tee.too_large:
            counters.dropped_body_too_large += 1
            self.sink.drop(route.id, "body_too_large")
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
        self.sink.submit(info[1], raw)

    def _record(self, route: Any, config: ShadowConfig, flow: Any, tee: _Tee, response_body: bytes) -> None:
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
        if self.sink.record(config.record.file, config.redact.headers, config.redact.body_fields, captured):
            counters.recorded += 1
        else:
            counters.record_dropped += 1


def _text_of(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else value


def _header_map(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in pairs:
        out[k] = out[k] + ", " + v if k in out else v
    return out
