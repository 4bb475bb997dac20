"""Circuit breakers, one per upstream: stop sending to an upstream that keeps failing.

closed → (`failures` consecutive failures) → open → (`reset_after` elapsed) → half-open: exactly
one probe request goes through; its success closes the breaker, its failure opens it again.
Pure state over an injected clock; the proxy reports outcomes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from facade.config import BreakerConfig

__all__ = ["Breaker", "Breakers", "CLOSED", "HALF_OPEN", "OPEN"]

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half_open", OPEN: "open"}


class Breaker:
    """The breaker of one upstream."""

    __slots__ = ("failures", "reset_after", "state", "consecutive", "opened_at", "probing", "clock", "opened_total")

    def __init__(self, failures: int, reset_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.reset_after = reset_after
        self.clock = clock
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.probing = False
        self.opened_total = 0

    def allow(self) -> bool:
        """Whether a request may go to the upstream now (in half-open: only the one probe)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            if self.clock() - self.opened_at < self.reset_after:
                return False
            self.state = HALF_OPEN
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def success(self) -> None:
        self.consecutive = 0
        if self.state != CLOSED:
            self.state = CLOSED
            self.probing = False

    def failure(self) -> None:
        self.consecutive += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.consecutive >= self.failures):
            self._open()

    def release(self) -> None:
        """The probe ended without a verdict (e.g. the client went away): let another probe through."""
        if self.state == HALF_OPEN:
            self.probing = False

    def _open(self) -> None:
        self.state = OPEN
        self.opened_at = self.clock()
        self.probing = False
        self.opened_total += 1


class Breakers:
    """Breakers by upstream name; they survive reloads (settings follow the newest config)."""

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.by_name: dict[str, Breaker] = {}

    def get(self, name: str) -> Breaker:
        breaker = self.by_name.get(name)
        if breaker is None:
            breaker = self.by_name[name] = Breaker(self.config.failures, self.config.reset_after, self.clock)
        return breaker

    def configure(self, config: BreakerConfig, names: set[str] | frozenset[str]) -> None:
        """Apply new settings and forget upstreams that are no longer declared."""
        self.config = config
        for name in list(self.by_name):
            if name not in names:
                del self.by_name[name]
        for breaker in self.by_name.values():
            breaker.failures = config.failures
            breaker.reset_after = config.reset_after

    def states(self) -> dict[str, int]:
        return {name: breaker.state for name, breaker in self.by_name.items()}
