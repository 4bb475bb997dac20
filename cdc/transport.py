"""How change events travel from the capture to the applier.

A `Transport` carries batches (one source transaction, or one bounded chunk of a large one)
and their acknowledgements: the applier calls `Batch.ack()` after it committed the batch, and
only then does the capture let the slot's flush position move past it (memory transport), or
does the consumer commit its offsets (Kafka transport, `cdc/kafka.py`).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from cdc.events import ChangeEvent, Position
from cdc.exceptions import CDCError

__all__ = ["Batch", "MemoryTransport", "Transport", "TransportClosedError"]


class TransportClosedError(CDCError):
    """Publishing into a transport that was closed (the applier side has stopped)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Events of one source transaction, or one chunk of it (`final` False until its last chunk).

    A heartbeat is a batch without events: every change before `position` was published before
    it, and `heartbeat_ms` is the source's clock there; applying it moves the checkpoint of an
    idle source forward (lag in bytes and seconds).
    """

    events: list[ChangeEvent]
    position: Position
    ack: Callable[[], None]
    final: bool = True
    heartbeat_ms: int | None = None


class Transport(Protocol):
    """The seam between capture and apply."""

    def publish(
        self,
        batch_events: list[ChangeEvent],
        position: Position,
        on_durable: Callable[[], None],
        *,
        final: bool = True,
        heartbeat_ms: int | None = None,
    ) -> object:
        """Hand a batch over; `on_durable` is called once the applier has committed it.

        `heartbeat_ms` (with no events): a heartbeat, see `Batch`. The return value is the
        transport's own business (callers ignore it)."""

    def batches(self, timeout: float) -> Iterator[Batch]:
        """Yield batches in order; stop after `timeout` seconds without one, or once closed."""

    def close(self) -> None: ...


class MemoryTransport:
    """An in-process bounded queue: `publish` blocks while `max_batches` batches are unconsumed.

    The capture's acknowledgement callback becomes `Batch.ack` unchanged, so the slot's flush
    position follows the applier's commits.
    """

    def __init__(self, max_batches: int = 16) -> None:
        if max_batches < 1:
            raise CDCError(f"max_batches must be at least 1, got {max_batches}")
        self._max = max_batches
        self._queue: collections.deque[Batch] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.published = 0
        self.consumed = 0

    def publish(
        self,
        batch_events: Sequence[ChangeEvent],
        position: Position,
        on_durable: Callable[[], None],
        *,
        final: bool = True,
        heartbeat_ms: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Queue the batch, waiting while the queue is full; False if `timeout` ran out first."""
        batch = Batch(list(batch_events), position, on_durable, final, heartbeat_ms)
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while len(self._queue) >= self._max and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            if self._closed:
                raise TransportClosedError("the memory transport is closed; the applier has stopped")
            self._queue.append(batch)
            self.published += 1
            self._cond.notify_all()
            return True

    def batches(self, timeout: float) -> Iterator[Batch]:
        while True:
            with self._cond:
                deadline = time.monotonic() + timeout
                while not self._queue and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._cond.wait(remaining)
                if not self._queue:
                    return
                batch = self._queue.popleft()
                self.consumed += 1
                self._cond.notify_all()
            yield batch

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Wake up every waiting publisher (they raise) and consumer (it stops once drained)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
