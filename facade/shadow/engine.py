"""The shadow engine: per-route bounded queues, in-flight caps, mirroring, comparing, storing.

It runs inside the façade (inline) or in the shadow worker process (`facade.shadow.worker`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from facade.config import ShadowConfig, ShadowStoreConfig
from facade.shadow.client import H1ShadowClient, ShadowClient, decoded
from facade.shadow.compare import Reply
from facade.shadow.exceptions import ShadowSendError
from facade.shadow.jobs import RawJob, RouteInfo, ShadowCounters, ShadowJob, build_job
from facade.shadow.judge import RouteRules, compare_pair, failure_record, judge, route_rules
from facade.shadow.noise import NoiseModel
from facade.shadow.recorder import Recordings
from facade.shadow.store import ComparisonRecord, DropRecord, ShadowStore
from facade.shadow.writer import StoreWriter

__all__ = ["ShadowEngine"]

log = logging.getLogger("strangler.shadow")

INLINE_COMPARE_BYTES = 64 * 1024  # larger bodies are compared on a worker thread


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
