"""The drain a write hold waits for: its computation over request intervals, and `GET
/_strangler/drain` measuring it on the façade's own requests."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.drain import RecentRequests, mean_drain
from tests.facade.proxy_support import facade, get, post, read_body, serve, write_config

ROUTES = """
- id: writes
  match: {path: /api/products/**, methods: [POST]}
  to: monolith
"""


def brute_force(intervals: list[tuple[float, float]], start: float, end: float, steps: int = 20000) -> float:
    """The same average, by evaluating D(t) = max remaining of those in flight on a fine grid."""
    total = 0.0
    for i in range(steps):
        t = start + (end - start) * (i + 0.5) / steps
        total += max((finish - t for begin, finish in intervals if begin <= t < finish), default=0.0)
    return total / steps


def test_mean_drain_of_known_shapes() -> None:
    assert mean_drain([(0.0, 1.0)], 0.0, 2.0) == pytest.approx(0.25)  # ∫ (1 - t) over [0, 1], over 2 s
    assert mean_drain([(0.0, 1.0), (0.2, 0.5)], 0.0, 1.0) == pytest.approx(0.5)  # the long one decides
    assert mean_drain([(0.0, 1.0), (0.5, 2.0)], 0.0, 2.0) == pytest.approx((0.5 * 0.75 + 1.5 * 0.75) / 2)  # 1 - t, then 2 - t
    assert mean_drain([], 0.0, 1.0) == 0.0
    assert mean_drain([(-1.0, 0.5)], 0.0, 1.0) == pytest.approx(0.125)  # begun before the window


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3), st.floats(0.001, 1.5)), max_size=12), st.floats(0, 2), st.floats(0.1, 3))
def test_mean_drain_matches_the_definition(raw: list[tuple[float, float]], start: float, length: float) -> None:
    intervals = [(begin, begin + took) for begin, took in raw]
    assert mean_drain(intervals, start, start + length) == pytest.approx(brute_force(intervals, start, start + length), abs=2e-3)


def test_the_window_ends_where_a_request_still_in_flight_began() -> None:
    now = [10.0]
    recent = RecentRequests(clock=lambda: now[0])
    first = recent.started("writes", now[0])
    now[0] = 10.5
    recent.ended(first)
    now[0] = 11.0
    recent.started("writes", now[0])  # still in flight: its end is not known
    now[0] = 12.0
    answer = recent.drain(["writes"], 2.0)
    assert answer == {"drain_s": pytest.approx(0.5 * 0.5 / 2 / 1.0), "inflight": 0.5, "fastest_s": 0.5, "requests": 1, "seconds": 1.0}
    assert recent.drain(["other"], 2.0) == {"drain_s": 0.0, "inflight": 0.0, "fastest_s": None, "requests": 0, "seconds": 2.0}


def test_the_facade_measures_the_drain_of_its_own_requests(tmp_path: Path) -> None:
    """Concurrent writes to a slow upstream: the façade's figure equals the one computed from the
    clients' own timings of the same requests (which enclose the façade's by its overhead)."""

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await asyncio.sleep(0.2)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    timings: list[tuple[float, float]] = []

    def client(count: int) -> None:
        for _ in range(count):
            began = time.monotonic()
            assert post(f"{url}/api/products", content=b"w", timeout=30).status_code == 200
            timings.append((began, time.monotonic()))

    with serve(slow) as upstream_url:
        path = write_config(tmp_path / "routing.yaml", {"monolith": upstream_url}, routes=ROUTES)
        with facade(path) as (url, _):
            started = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(client, [4, 4, 3, 2]))
            seconds = time.monotonic() - started + 0.05
            answered = time.monotonic()
            answer = get(f"{url}/_strangler/drain", params={"route": "writes", "seconds": f"{seconds:.3f}"}, timeout=10).json()
            bad = get(f"{url}/_strangler/drain", params={"route": "writes", "seconds": "0"}, timeout=10)
            unknown = get(f"{url}/_strangler/drain", params={"route": "nope"}, timeout=10)
    clients = mean_drain(timings, answered - seconds, answered)
    assert answer["routes"] == ["writes"] and answer["requests"] == len(timings) == 13
    assert clients * 0.7 <= answer["drain_s"] <= clients * 1.02, (answer, clients)
    busy = sum(min(end, answered) - max(begin, answered - seconds) for begin, end in timings)
    assert busy / seconds * 0.7 <= answer["inflight"] <= busy / seconds * 1.02  # four clients, back to back
    assert 0.2 <= answer["fastest_s"] <= max(end - begin for begin, end in timings)
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
    assert unknown.status_code == 404 and "no route 'nope'" in unknown.json()["detail"]
