"""The shadow worker process: mirroring, comparing and storing away from the façade's event loop.

The façade's hooks hand each sampled request to `ProcessSink`, which writes it as one frame to
the worker's stdin and returns at once. The worker (`python -m facade.shadow_worker`) runs a
`ShadowEngine` (bounded per-route queues, in-flight caps, candidate and noise requests,
comparison, the store writer) and writes its live counters back on stdout a few times a second.
So shadowing costs the façade a copy and a pickle per request, and its CPU-heavy parts run on
another core. Frames are a 4-byte big-endian length and a pickle; both ends are this module.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pickle
import struct
import sys
import time
from typing import Any

from facade.config import ShadowConfig, ShadowStoreConfig
from facade.shadow import RawJob, RouteInfo, ShadowEngine

__all__ = ["ProcessSink", "main"]

log = logging.getLogger("strangler.shadow.worker")

FRAME = struct.Struct("!I")
REPORT_INTERVAL = 0.1
DRAIN_TIMEOUT = 5.0
NICENESS = 19


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
    counted as `queue_full`, as a full route queue in the worker would be.
    """

    def __init__(self, *, store_config: ShadowStoreConfig, response_cap: int, max_backlog: int = 4 * 1024 * 1024, python: str | None = None) -> None:
        self.store_config = store_config
        self.response_cap = response_cap
        self.max_backlog = max_backlog
        self.python = python or sys.executable
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._keys: dict[int, tuple[RouteInfo, int]] = {}
        self._remote: dict[str, dict[str, Any]] = {}
        self._store: dict[str, int] | None = None
        self._local_drops: collections.Counter[tuple[str, str]] = collections.Counter()
        self._pending_drops: collections.Counter[tuple[str, str]] = collections.Counter()
        self._broken = False
        self._batch: list[bytes] = []
        self._flush_scheduled = False

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "facade.shadow_worker", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        self._write(("init", self.store_config.model_dump(mode="json"), self.response_cap))
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
        if self._broken or self._backlog() > self.max_backlog:
            self._local_drops[(route_id, "queue_full")] += 1
            self._pending_drops[(route_id, "queue_full")] += 1
            return
        key = self._keys.get(id(info))
        if key is None or key[0] is not info:
            key = (info, len(self._keys) + 1)
            self._keys[id(info)] = key
            self._write(("route", key[1], info.route_id, info.config.model_dump(mode="json"), info.segments, info.candidate_base))
        if self._pending_drops:
            for (route, reason), n in self._pending_drops.items():
                self._write(("drop", route, reason, n))
            self._pending_drops.clear()
        if not self._write(("job", key[1], raw)):
            self._local_drops[(route_id, "queue_full")] += 1

    def drop(self, route_id: str, reason: str) -> None:
        self._write(("drop", route_id, reason, 1))

    def counters(self) -> dict[str, dict[str, Any]]:
        out = {route: dict(values) for route, values in self._remote.items()}
        for (route, reason), n in self._local_drops.items():
            entry = out.setdefault(route, {})
            dropped = dict(entry.get("dropped", {}))
            dropped[reason] = dropped.get(reason, 0) + n
            entry["dropped"] = dropped
        return out

    def store_stats(self) -> dict[str, int] | None:
        return self._store

    async def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        while True:
            message = await _read_frame(proc.stdout)
            if message is None:
                return
            if message[0] == "counters":
                self._remote, self._store = message[1], message[2]

    async def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
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
    routes: dict[int, RouteInfo] = {}
    last: Any = None

    def report(force: bool = False) -> None:
        nonlocal last
        snapshot = (engine.counters(), engine.store_stats())
        if force or snapshot != last:
            last = snapshot
            writer.write(_frame(("counters", *snapshot)))

    async def reporter() -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            report()

    ticker = asyncio.get_running_loop().create_task(reporter())
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
        # The façade is stopping: let queued shadows finish for a bounded time.
        deadline = time.monotonic() + DRAIN_TIMEOUT
        for rs in engine.routes.values():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rs.queue.join(), timeout=max(0.0, deadline - time.monotonic()))
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
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
    """Entry point of `python -m facade.shadow_worker` (started by the façade, not by people)."""
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


if __name__ == "__main__":
    main()
