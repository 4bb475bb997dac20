from __future__ import annotations

import asyncio

import pytest

from common.waiting import TimedOut, wait_until, wait_until_async


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_until_returns_the_first_truthy_value() -> None:
    clock = Clock()
    readings = iter([0, None, 7])
    assert wait_until(lambda: next(readings), 1.0, 0.1, clock=clock, sleep=clock.sleep) == 7
    assert clock.now == pytest.approx(0.2)


def test_wait_until_names_what_it_waited_for_and_the_last_reading() -> None:
    clock = Clock()
    with pytest.raises(TimedOut, match=r"timed out after 0.5s waiting for the reload \(last reading: 0\)") as info:
        wait_until(lambda: 0, 0.5, 0.2, what="the reload", clock=clock, sleep=clock.sleep)
    assert info.value.last == 0
    assert clock.now == pytest.approx(0.5)


def test_wait_until_calls_the_predicate_once_with_no_time_left() -> None:
    calls = []
    with pytest.raises(TimedOut):
        wait_until(lambda: calls.append(1), 0.0)
    assert calls == [1]


def test_wait_until_lets_the_predicates_error_through() -> None:
    def broken() -> bool:
        raise RuntimeError("the child exited")

    with pytest.raises(RuntimeError, match="the child exited"):
        wait_until(broken, 5.0)


def test_wait_until_async_takes_plain_and_async_predicates() -> None:
    state = {"n": 0}

    async def ready() -> int:
        state["n"] += 1
        return state["n"] if state["n"] >= 3 else 0

    async def main() -> tuple[int, bool]:
        first = await wait_until_async(ready, 2.0, 0.001)
        second = await wait_until_async(lambda: True, 0.1)
        return first, second

    assert asyncio.run(main()) == (3, True)
    with pytest.raises(TimedOut):
        asyncio.run(wait_until_async(lambda: False, 0.01, 0.005))
