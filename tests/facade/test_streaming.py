"""Streaming through the façade: SSE as produced, big uploads in bounded memory, broken responses."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.facade.proxy_support import get, post, RawUpstream, facade, read_body, serve, wait_for, write_config
from tests.support import free_port


def test_server_sent_events_reach_the_client_before_the_upstream_finishes(tmp_path: Path) -> None:
    release = threading.Event()
    finished = threading.Event()

    async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
        # The second event is only produced after the client has seen the first one.
        released = await asyncio.to_thread(release.wait, 10)
        await send({"type": "http.response.body", "body": b"data: second\n\n" if released else b"data: late\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        finished.set()

    with serve(upstream) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            events = []
            with httpx.stream("GET", verify=False, url=url + "/events", timeout=15) as response:
                assert response.headers["content-type"] == "text/event-stream"
                for chunk in response.iter_raw():
                    events.append(chunk)
                    if chunk == b"data: first\n\n":
                        assert not finished.is_set()
                        release.set()
    assert b"".join(events) == b"data: first\n\ndata: second\n\n"


def test_client_leaving_an_endless_stream_stops_the_upstream_read(tmp_path: Path) -> None:
    cancelled = threading.Event()

    async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        while True:
            await send({"type": "http.response.body", "body": b"data: tick\n\n", "more_body": True})
            try:
                message = await asyncio.wait_for(receive(), 0.02)
            except TimeoutError:
                continue
            if message["type"] == "http.disconnect":
                cancelled.set()
                return

    with serve(upstream) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, app):
            with httpx.stream("GET", verify=False, url=url + "/endless", timeout=15) as response:
                next(response.iter_raw())
            wait_for(lambda: app.proxy.inflight == 0, what="the façade to drop the stream")
            wait_for(cancelled.is_set, what="the upstream to see the disconnect")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_upstream_killed_mid_response_aborts_the_client_connection(tmp_path: Path, framing: str) -> None:
    def behaviour(index: int, head: bytes, body: bytes) -> bytes | None:
        if framing == "content-length":
            return b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\nconnection: close\r\n\r\n" + b"x" * 5000
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n1388\r\n" + b"x" * 5000 + b"\r\n"

    with RawUpstream(behaviour) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up.url})
        with facade(config) as (url, _):
            with pytest.raises(httpx.RemoteProtocolError):
                get(url + "/download", timeout=15)
            metrics = get(url + "/_strangler/metrics").text
    errors = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "strangler_errors"
        for sample in family.samples
        if sample.name == "strangler_errors_total"
    }
    assert errors == {"upstream_aborted": 1.0}


def _peak_rss(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in bytes, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


SIZE_200_MB = 200 * 1024 * 1024


@contextlib.contextmanager
def _facade_process(tmp_path: Path, config: Path) -> Iterator[tuple[str, int]]:
    """`strangler facade serve` in a process of its own (so its memory can be read): URL and pid."""
    port = free_port()
    log_path = tmp_path / "facade.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "scripts", "facade", "serve", "--config", str(config), "--port", str(port), "--no-access-log"],
            stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                return get(url + "/_strangler/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=30, what="the façade process")
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=15)


def _assert_bounded(before: int, peak: int, direction: str) -> None:
    growth = peak - before
    print(f"façade RSS {before / 2**20:.1f} MB before, peak {peak / 2**20:.1f} MB while streaming 200 MB ({direction})")
    assert growth < 40 * 1024 * 1024, f"the façade grew by {growth / 2**20:.1f} MB while streaming 200 MB ({direction})"


def test_a_200_mb_upload_streams_through_in_bounded_memory(tmp_path: Path) -> None:
    received = {"bytes": 0}

    async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        total = 0
        while True:
            message = await receive()
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        received["bytes"] = total
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": str(total).encode()})

    def body() -> Iterator[bytes]:
        chunk = b"z" * (1024 * 1024)
        for _ in range(SIZE_200_MB // len(chunk)):
            yield chunk

    with serve(upstream) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up}, default_timeout="60s")
        with _facade_process(tmp_path, config) as (url, pid):
            # Warm up the request path so its one-time allocations are not counted.
            post(url + "/warm", content=b"w" * (1024 * 1024))
            before, _ = _peak_rss(pid)
            response = post(url + "/upload", content=body(), timeout=120)
            _, peak = _peak_rss(pid)
    assert response.status_code == 200 and response.text == str(SIZE_200_MB)
    assert received["bytes"] == SIZE_200_MB
    _assert_bounded(before, peak, "upload")


def test_a_200_mb_download_streams_through_in_bounded_memory(tmp_path: Path) -> None:
    async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        size = SIZE_200_MB if scope["path"] == "/download" else 1024 * 1024
        chunk = b"d" * (1024 * 1024)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(size).encode())]})
        for sent in range(0, size, len(chunk)):
            await send({"type": "http.response.body", "body": chunk, "more_body": sent + len(chunk) < size})

    with serve(upstream) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up}, default_timeout="60s")
        with _facade_process(tmp_path, config) as (url, pid):
            assert len(get(url + "/warm", timeout=30).content) == 1024 * 1024
            before, _ = _peak_rss(pid)
            received = 0
            with httpx.stream("GET", url + "/download", timeout=120) as response:
                for data in response.iter_raw():
                    received += len(data)
            _, peak = _peak_rss(pid)
    assert response.status_code == 200 and received == SIZE_200_MB
    _assert_bounded(before, peak, "download")
