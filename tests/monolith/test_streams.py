"""Health, the server-sent-events stream and the streaming upload sink."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator

from tests.monolith.conftest import Shop


def test_healthz(shop: Shop) -> None:
    with shop.client() as client:
        response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_stock_events_arrive_one_by_one(shop: Shop) -> None:
    events = []
    with shop.client() as client, client.stream("GET", "/api/events/stock?count=4&interval=0.01") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    assert [e["seq"] for e in events] == [0, 1, 2, 3]


def test_upload_is_hashed_as_it_streams(shop: Shop) -> None:
    chunks = [os.urandom(64 * 1024) for _ in range(16)]

    def body() -> Iterator[bytes]:
        yield from chunks

    with shop.client() as client:
        response = client.post("/api/uploads", content=body())
    assert response.status_code == 200
    assert response.json() == {"bytes": 16 * 64 * 1024, "sha256": hashlib.sha256(b"".join(chunks)).hexdigest()}
