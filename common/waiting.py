"""`wait_until`: poll a condition until it holds or a deadline passes.

Every "wait for the server / the applier / the slot / the reload" loop goes through this one
function, so each has a deadline, a bounded polling interval and a message that says what it
waited for. The async twin `wait_until_async` does the same on an event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["TimedOut", "wait_until", "wait_until_async"]

T = TypeVar("T")


class TimedOut(TimeoutError):
    """The condition did not hold within the timeout; `last` is the predicate's last value."""

    def __init__(self, message: str, last: object = None) -> None:
        super().__init__(message)
        self.last = last


def _message(what: str, timeout: float, last: object) -> str:
    text = f"timed out after {timeout:g}s waiting for {what}"
    return text if last is None or last is False else f"{text} (last reading: {last!r})"


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    *,
    what: str = "the condition",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `predicate` until it returns something truthy and return that value.

    The predicate is called at least once, also with `timeout` 0. After `timeout` seconds it
    raises `TimedOut` naming `what`. An exception from the predicate propagates at once (a process
    that died is not a reason to keep waiting).
    """
    deadline = clock() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - clock()
        if remaining <= 0:
            raise TimedOut(_message(what, timeout, value), value)
        sleep(min(interval, remaining))


async def wait_until_async(
    predicate: Callable[[], Awaitable[T]] | Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    *,
    what: str = "the condition",
) -> T:
    """`wait_until` on an event loop; `predicate` may be a plain or an async function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimedOut(_message(what, timeout, value), value)
        await asyncio.sleep(min(interval, remaining))
