"""The shadow worker process: mirroring, comparing and storing away from the façade's event loop.

The façade's hooks hand each sampled request to `ProcessSink`, which writes it as one frame to
the worker's stdin and returns at once. The worker (`python -m facade.shadow.worker`) runs a
`ShadowEngine` (bounded per-route queues, in-flight caps, candidate and noise requests,
comparison, the store writer) and writes its live counters back on stdout within 0.1 s of a
change. So shadowing costs the façade a copy and a pickle per request, and its CPU-heavy parts
run on another core. Exchanges sampled for recording (`shadow.record`) come the same way, and the
worker redacts them and appends them to the traffic file. Frames are a 4-byte big-endian length and a pickle; both ends are this module.

The worker runs at the lowest CPU priority and keeps to a CPU budget (`shadow_worker.cpu`, a
share of one core): the processor time it has used is a token bucket, and while it is over, it
starts no new shadow and tells the façade, which then drops sampled requests without even
pickling them and counts them as `cpu_budget`. A small or virtual machine is where this matters:
there, CPU a background process takes is CPU the primary traffic loses, whatever its priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from facade.config import ShadowConfig, ShadowStoreConfig
from facade.shadow.engine import ShadowEngine
from facade.shadow.jobs import RawJob, RouteInfo

__all__ = ["ProcessSink", "main"]

log = logging.getLogger("strangler.shadow.worker")

FRAME = struct.Struct("!I")
REPORT_INTERVAL = 0.1
MIN_RECHECK = 0.005  # shortest wait before an over-budget worker looks at its budget again
DRAIN_TIMEOUT = 5.0
NICENESS = 19
BUDGET_BURST = 0.5  # seconds' worth of budget an idle worker saves: the share holds over any second
DROP_REASONS = ("queue_full", "cpu_budget")  # the drops the façade side counts itself


class CpuBudget:
    """A token bucket over this process's CPU time (all threads): `percent` of one core.

    `within()` is called as jobs come and go; it adds the budget earned since the last call,
    takes away the CPU time used, and says whether the worker may go on. Unused budget is kept
    for at most `burst` seconds' worth, so an idle worker can take a burst but not a long spree.
    Once over (a negative balance), the worker is within again only when half the burst has been
    earned back, and `wait()` gives the time until the whole burst is: waking up to look costs
    CPU too (on a small VM a few hundred microseconds), and without the margin a worker on a
    small budget could spend all it earns on waking up to check.
    """

    def __init__(self, percent: float, *, burst: float = BUDGET_BURST,
                 clock: Any = time.monotonic, cpu: Any = time.process_time) -> None:
        self.share = percent / 100
        self.cap = self.share * burst
        self._clock, self._cpu = clock, cpu
        self._at, self._used = clock(), cpu()
        self.balance = self.cap
        self.over = False

    def within(self) -> bool:
        now, used = self._clock(), self._cpu()
        self.balance = min(self.cap, self.balance + (now - self._at) * self.share - (used - self._used))
        self._at, self._used = now, used
        self.over = self.balance < (self.cap / 2 if self.over else 0)
        return not self.over

    def wait(self) -> float:
        """Seconds an over-budget worker should wait before it looks again (0 when within)."""
        return max(0.0, (self.cap - self.balance) / self.share) if self.over else 0.0


def _frame(message: tuple[Any, ...]) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    try:
        head = await reader.readexactly(FRAME.size)
        (size,) = FRAME.unpack(head)
        result: tuple[Any, ...] = pickle.loads(await reader.readexactly(size))
        return result
    except asyncio.IncompleteReadError:
        return None


class ProcessSink:
    """Hands shadow jobs to a worker process through a pipe; never blocks the caller.

    The pipe's write backlog is bounded (`max_backlog` bytes): beyond it a job is dropped and
    counted as `queue_full`, as a full route queue in the worker would be, and so is a job for a
    route whose queue the worker reports half full. While the worker says it is over its CPU
    budget (`cpu_budget`, percent of one core; None: no budget), jobs are dropped here, before
    any copy, and counted as `cpu_budget`.
    """

    def __init__(self, *, store_config: ShadowStoreConfig, response_cap: int, cpu_budget: float | None = None,
                 max_backlog: int = 4 * 1024 * 1024, python: str | None = None) -> None:
        self.store_config = store_config
        self.response_cap = response_cap
        self.cpu_budget = cpu_budget
        self.paused = False  # the worker is over its CPU budget
        self._full: frozenset[str] = frozenset()  # routes whose queue in the worker is half full
        self.max_backlog = max_backlog
        self.python = python or sys.executable
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._keys: dict[int, tuple[RouteInfo, int]] = {}
        self._remote: dict[str, dict[str, Any]] = {}
        self._store: dict[str, int] | None = None
        self._cpu_seconds = 0.0  # processor time the worker has used, as it last reported
        # Jobs dropped here, by reason and route: those the worker has been told of (or never will
        # be: it is gone), and those still to tell it, with the next frames it gets. Plain dicts:
        # a drop is counted on the request path, for most requests while the worker sheds load.
        self._told_drops: dict[str, dict[str, int]] = {reason: {} for reason in DROP_REASONS}
        self._pending_drops: dict[str, dict[str, int]] = {reason: {} for reason in DROP_REASONS}
        self._pending = False
        self._broken = False
        self._stopping = False
        self._batch: list[bytes] = []
        self._flush_scheduled = False

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "facade.shadow.worker", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        self._write(("init", self.store_config.model_dump(mode="json"), self.response_cap, self.cpu_budget))
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="shadow-worker-reader")

    def _write(self, message: tuple[Any, ...]) -> bool:
        if self._proc is None or self._broken:
            return False
        # Frames of one loop iteration go out in one write (one system call, not one per request).
        self._batch.append(_frame(message))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._batch = self._batch, []
        proc = self._proc
        if not batch or proc is None or proc.stdin is None or self._broken or proc.stdin.is_closing():
            return
        try:
            proc.stdin.write(b"".join(batch))
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            log.error("the shadow worker process is gone; shadow jobs are dropped from now on")
            self._broken = True

    def _backlog(self) -> int:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return 0
        return proc.stdin.transport.get_write_buffer_size()

    def submit(self, info: RouteInfo, raw: RawJob) -> None:
        route_id = info.route_id
        if self.refuse(route_id):  # the worker's state may have changed since the request began
            return
        if self._broken or self._backlog() > self.max_backlog:
            self._drop_here(route_id, "queue_full")
            return
        key = self._keys.get(id(info))
        if key is None or key[0] is not info:
            key = (info, len(self._keys) + 1)
            self._keys[id(info)] = key
            self._write(("route", key[1], info.route_id, info.config.model_dump(mode="json"), info.segments, info.candidate_base))
        self._send_pending_drops()
        if not self._write(("job", key[1], raw)):
            told = self._told_drops["queue_full"]
            told[route_id] = told.get(route_id, 0) + 1

    def refuse(self, route_id: str) -> bool:
        if self.paused:
            self._drop_here(route_id, "cpu_budget")
            return True
        if route_id in self._full:
            self._drop_here(route_id, "queue_full")
            return True
        return False

    def _drop_here(self, route_id: str, reason: str) -> None:
        # Counted here; the worker only stores it (sent with the next frames).
        pending = self._pending_drops[reason]
        pending[route_id] = pending.get(route_id, 0) + 1
        self._pending = True

    def _send_pending_drops(self) -> None:
        if self._pending and not self._broken:
            for reason, routes in self._pending_drops.items():
                told = self._told_drops[reason]
                for route, n in routes.items():
                    self._write(("stored_drop", route, reason, n))
                    told[route] = told.get(route, 0) + n
                routes.clear()
            self._pending = False

    def drop(self, route_id: str, reason: str) -> None:
        self._write(("drop", route_id, reason, 1))

    def record(self, file: str, redact_headers: Sequence[str], redact_fields: Sequence[str], captured: dict[str, Any]) -> bool:
        # Not subject to the CPU budget (the record sample is the user's own bound), only to the
        # pipe's backlog, like a job. The bodies go whole (up to the response cap): cutting them
        # before redaction could cut a secret field's name off its value.
        if self._broken or self._backlog() > self.max_backlog:
            return False
        return self._write(("record", file, tuple(redact_headers), tuple(redact_fields), captured))

    def counters(self) -> dict[str, dict[str, Any]]:
        out = {route: dict(values) for route, values in self._remote.items()}
        for counts in (self._told_drops, self._pending_drops):
            for reason, routes in counts.items():
                for route, n in routes.items():
                    entry = out.setdefault(route, {})
                    dropped = dict(entry.get("dropped", {}))
                    dropped[reason] = dropped.get(reason, 0) + n
                    entry["dropped"] = dropped
        return out

    def store_stats(self) -> dict[str, int] | None:
        return self._store

    def worker_stats(self) -> dict[str, Any]:
        """The worker's process id, budget, whether it is over it now and the CPU seconds it has
        used (shown at `/_strangler/shadow`)."""
        return {
            "pid": self._proc.pid if self._proc is not None else None,
            "cpu_budget": self.cpu_budget,
            "over_budget": self.paused,
            "cpu_seconds": round(self._cpu_seconds, 3),
            "running": self._proc is not None and not self._broken,
        }

    async def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        while True:
            message = await _read_frame(proc.stdout)
            if message is None:
                if self._proc is proc and not self._stopping:
                    log.error("the shadow worker process ended (exit status %s); shadow jobs are dropped from now on", await proc.wait())
                self._broken = True
                return
            if message[0] == "counters":
                self._remote, self._store, self._cpu_seconds = message[1], message[2], message[3]
            elif message[0] == "pressure":
                self.paused, self._full = message[1], frozenset(message[2])
                if not self.paused:
                    self._send_pending_drops()

    async def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._stopping = True
        self._send_pending_drops()
        self._flush()
        if proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await proc.stdin.drain()
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout=DRAIN_TIMEOUT + 10)
        except TimeoutError:
            log.error("the shadow worker did not stop in time; killing it")
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await self._reader
            self._reader = None
        self._proc = None


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    init = await _read_frame(reader)
    if init is None or init[0] != "init":
        return
    engine = ShadowEngine(store_config=ShadowStoreConfig.model_validate(init[1]), response_cap=init[2])
    await engine.start()
    budget = CpuBudget(init[3]) if init[3] is not None else None
    over = draining = False
    full: frozenset[str] = frozenset()
    routes: dict[int, RouteInfo] = {}
    last: Any = None
    loop = asyncio.get_running_loop()
    # No ticking: the budget and the queues are looked at when a job is queued or done, and,
    # while over budget, once more when the budget will have refilled. An idle worker wakes for
    # nothing (on a small VM, 50 wake-ups a second cost a few percent of a core).
    recheck: asyncio.TimerHandle | None = None
    reporting: asyncio.TimerHandle | None = None
    looking = False

    def report(force: bool = False) -> None:
        nonlocal last, reporting
        reporting = None
        snapshot = (engine.counters(), engine.store_stats())
        if force or snapshot != last:
            last = snapshot
            writer.write(_frame(("counters", *snapshot, time.process_time())))

    def pressure() -> None:
        """Tell the façade when the worker goes over its CPU budget or a route's queue is half
        full, and when that ends: the façade then drops those jobs before copying them."""
        nonlocal over, full, recheck
        if draining:
            return
        now_over = budget is not None and not budget.within()
        if now_over and recheck is None:
            assert budget is not None
            recheck = loop.call_later(max(MIN_RECHECK, budget.wait()), rechecked)
        now_full = frozenset(r for r, rs in engine.routes.items() if rs.queue.qsize() * 2 >= rs.queue.maxsize)
        if now_over == over and now_full == full:
            return
        if now_over != over:
            (engine.pause if now_over else engine.resume)()
        over, full = now_over, now_full
        writer.write(_frame(("pressure", over, sorted(full))))

    def rechecked() -> None:
        nonlocal recheck
        recheck = None
        pressure()

    def changed() -> None:
        # Once per loop iteration, however many frames or finished jobs it brought: a budget
        # check reads the process's CPU clock, a system call.
        nonlocal looking
        if not looking:
            looking = True
            loop.call_soon(look)

    def look() -> None:
        nonlocal looking, reporting
        looking = False
        pressure()
        if reporting is None:
            reporting = loop.call_later(REPORT_INTERVAL, report)

    engine.on_change = changed
    try:
        while True:
            message = await _read_frame(reader)
            if message is None:
                break
            kind = message[0]
            if kind == "job":
                engine.submit(routes[message[1]], message[2])
            elif kind == "route":
                _, key, route_id, config, segments, candidate_base = message
                routes[key] = RouteInfo(route_id, ShadowConfig.model_validate(config), tuple(segments), candidate_base)
            elif kind == "drop":
                engine.drop(message[1], message[2], message[3])
            elif kind == "stored_drop":
                engine.drop(message[1], message[2], message[3], counted=True)
            elif kind == "record":
                engine.record(*message[1:])
            changed()
        # The façade is stopping: let queued shadows finish for a bounded time.
        draining = True
        engine.resume()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        for rs in engine.routes.values():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rs.queue.join(), timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for handle in (recheck, reporting):
            if handle is not None:
                handle.cancel()
        await engine.stop()
        report(force=True)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout.buffer)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    await _serve(reader, writer)


def main() -> None:
    """Entry point of `python -m facade.shadow.worker` (started by the façade, not by people)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s shadow-worker %(levelname)s %(message)s", stream=sys.stderr)
    # Shadowing only gets the CPU the primary traffic leaves over: when the machine is busy the
    # worker falls behind, its queues fill, and the excess is dropped and counted.
    _yield_cpu()
    asyncio.run(_main())


def _yield_cpu() -> None:
    """Lowest CPU priority, also against other programs. Where Linux groups scheduling by session
    (autogroup), a process's nice value only counts inside its session, so the worker takes a
    session of its own and lowers that group's priority too; it still ends when the façade
    closes the pipe."""
    with contextlib.suppress(OSError):
        os.setsid()
    with contextlib.suppress(OSError):
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(NICENESS))
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


if __name__ == "__main__":
    main()
