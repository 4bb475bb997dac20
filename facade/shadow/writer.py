"""`StoreWriter`: batches comparisons into the shadow store on a worker thread, off the request path."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable

from facade.shadow.store import ComparisonRecord, DropRecord, ShadowStore

__all__ = ["StoreWriter"]

log = logging.getLogger("strangler.shadow.store")


class StoreWriter:
    """Batches records and writes them on a worker thread; never blocks the caller.

    `submit` appends to a bounded buffer (overflow is counted in `lost`); a task owned by the
    writer flushes `interval` seconds after the first record arrives or as soon as `batch` records
    are waiting (`poke()` asks the same for drops waiting at `drops_source`), and applies retention
    every `prune_every` seconds; `on_written` is called after each batch stored. An idle writer
    sets no timers but that one. `stop()` flushes what is left.
    """

    def __init__(
        self,
        store: ShadowStore,
        *,
        batch: int = 200,
        interval: float = 0.5,
        capacity: int = 10_000,
        prune_every: float = 300.0,
        drops_source: Callable[[], list[DropRecord]] | None = None,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self._drops_source = drops_source
        self._on_written = on_written
        self.batch = batch
        self.interval = interval
        self.prune_every = prune_every
        self.lost = 0
        self.written = 0
        self.failed = 0
        self._records: collections.deque[ComparisonRecord] = collections.deque()
        self._drops: list[DropRecord] = []
        self._capacity = capacity
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._last_prune = 0.0

    async def start(self) -> None:
        await asyncio.to_thread(self.store.create)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="shadow-store-writer")

    def submit(self, record: ComparisonRecord) -> None:
        if len(self._records) >= self._capacity:
            self.lost += 1
            return
        self._records.append(record)
        if len(self._records) >= self.batch:
            self._wake.set()
        else:
            self.poke()

    def poke(self) -> None:
        """Flush within `interval` (something is waiting); no-op before `start()`."""
        if self._timer is None and self._task is not None and not self._wake.is_set():
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._wake.set)

    def submit_drops(self, records: Iterable[DropRecord]) -> None:
        self._drops.extend(records)

    @property
    def pending(self) -> int:
        return len(self._records)

    async def flush(self) -> None:
        if self._drops_source is not None:
            self._drops.extend(self._drops_source())
        while self._records or self._drops:
            batch = [self._records.popleft() for _ in range(min(self.batch, len(self._records)))]
            dropped, self._drops = self._drops, []
            try:
                await asyncio.to_thread(self.store.write, batch, dropped)
                self.written += len(batch)
                if self._on_written is not None:
                    self._on_written()
            except Exception:  # noqa: BLE001 - a store outage must not stop the façade
                self.failed += len(batch)
                log.exception("shadow store write failed; %d comparisons lost", len(batch))
                return
        now = time.monotonic()
        if now - self._last_prune >= self.prune_every:
            self._last_prune = now
            try:
                await asyncio.to_thread(self.store.prune)
            except Exception:  # noqa: BLE001
                log.exception("shadow store retention failed")

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.prune_every)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            await self.flush()

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
        await asyncio.to_thread(self.store.close)
