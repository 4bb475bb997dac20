"""How long the requests in flight at a moment take to finish: the drain a write hold waits for.

A hold is acked once every request on its routes that was in flight when it landed has finished.
From the requests of a recent window, each as (start, end), the drain at a moment `t` is
`D(t) = max{end - t : start <= t < end}` (0 with nothing in flight), and the drain a hold landing
at a moment independent of the traffic waits for, expected, is the time average of `D` over the
window (`mean_drain`). That is measured on the façade's own requests, so it holds whatever the
latencies are made of: on a busy host, where they are mostly queueing and the requests in flight
finish one after another, and on a quiet one, where they are independent, alike.

Each worker keeps the last `RecentRequests.keep` finished requests of every route (one tuple
append per request) and answers `GET /_strangler/drain` from them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["RecentRequests", "mean_drain"]


def mean_drain(intervals: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """The time average over [start, end] of the drain `D(t)` of `intervals` (see the module).

    Sweeping the intervals by start: `R`, the latest end of those started so far, is the latest
    end of those in flight whenever it lies ahead (one that ended before `t` cannot be the
    latest end ahead), so `D(t) = max(0, R - t)` between two starts."""
    if end <= start:
        return 0.0
    total, reach, at = 0.0, float("-inf"), start
    for begin, finish in sorted(intervals):
        if begin > at:
            total += _area(reach, at, min(begin, end))
            at = min(begin, end)
        reach = max(reach, finish)
    total += _area(reach, at, end)
    return total / (end - start)


def _area(reach: float, a: float, b: float) -> float:
    """∫_a^b max(0, reach - t) dt."""
    if b <= a or reach <= a:
        return 0.0
    top = min(b, reach)
    return (top - a) * (2 * reach - a - top) / 2


class RecentRequests:
    """The last finished requests of each route of this worker, as (start, end) monotonic times,
    and the requests in flight now, by start."""

    keep = 4096

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.finished: dict[str, deque[tuple[float, float]]] = {}
        self.running: dict[int, tuple[str, float]] = {}
        self._next = 0

    def started(self, route: str, began: float) -> int:
        """A request on `route` began at `began` (the clock's time, taken by the caller); its token."""
        token = self._next = self._next + 1
        self.running[token] = (route, began)
        return token

    def ended(self, token: int) -> None:
        route, began = self.running.pop(token)
        recent = self.finished.get(route)
        if recent is None:
            recent = self.finished[route] = deque(maxlen=self.keep)
        recent.append((began, self.clock()))

    def drain(self, routes: Sequence[str], seconds: float) -> dict[str, Any]:
        """What a hold on `routes` (together, as one hold on all of them waits) would wait for,
        measured over the last `seconds` up to the start of the oldest request still in flight on
        them (after that it is not known yet):

        - `drain_s`: the mean drain `D(t)` (see the module), new requests arriving all along;
        - `inflight`: the mean number of requests in flight;
        - `fastest_s`: the 10th percentile of their durations, near what one takes with no
          queueing before it;

        with the number of requests they are measured on."""
        now = self.clock()
        wanted = set(routes)
        oldest = min((began for route, began in self.running.values() if route in wanted), default=now)
        start, end = now - seconds, oldest
        intervals = [item for route in wanted for item in self.finished.get(route, ()) if item[1] > start and item[0] < end]
        if end <= start:
            return {"drain_s": None, "inflight": None, "fastest_s": None, "requests": len(intervals), "seconds": 0.0}
        busy = sum(min(finish, end) - max(begin, start) for begin, finish in intervals)
        durations = sorted(finish - begin for begin, finish in intervals)
        return {
            "drain_s": round(mean_drain(intervals, start, end), 6),
            "inflight": round(busy / (end - start), 4),
            "fastest_s": round(durations[len(durations) // 10], 6) if durations else None,
            "requests": len(intervals),
            "seconds": round(end - start, 6),
        }
