"""Request-head limits and malformed request lines, over raw sockets to `strangler facade serve`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.head_limits import MemoryTransport
from tests.facade.proxy_support import echo, serve
from tests.facade.test_proxy import parsed, raw_exchange
from tests.support import free_port, wait_for

KB = 1024


class Counting:
    """The echo upstream, counting the requests that reach it."""

    def __init__(self) -> None:
        self.requests = 0
        self.app = echo("monolith")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.requests += 1
        await self.app(scope, receive, send)


def write_routing(path: Path, upstream: str, limits: str = "") -> None:
    path.write_text(f'version: 1\nupstreams:\n  monolith: {{url: "{upstream}"}}\n{limits}default: {{to: monolith}}\n')


@dataclass
class Served:
    url: str
    upstream: Counting
    upstream_url: str
    config: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real command on a loopback port in front of a counting upstream."""
    tmp = tmp_path_factory.mktemp("limits")
    upstream = Counting()
    with serve(upstream) as upstream_url:
        config = tmp / "routing.yaml"
        write_routing(config, upstream_url)
        port = free_port()
        log_path = tmp / "facade.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "scripts", "facade", "serve", "--config", str(config), "--port", str(port), "--no-watch", "--no-access-log"],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            def healthy() -> bool:
                assert process.poll() is None, log_path.read_text()
                try:
                    return httpx.get(url + "/_strangler/health", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(healthy, timeout=30, what="the façade process")
            yield Served(url, upstream, upstream_url, config)
        finally:
            process.terminate()
            process.wait(timeout=15)


def get_with(headers: list[tuple[str, str]], target: str = "/p") -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: shop.example", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def errors(url: str, reason: str) -> float:
    for line in httpx.get(url + "/_strangler/metrics", timeout=5).text.splitlines():
        if line.startswith("strangler_errors_total{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_header_line_over_8_kb_gets_431_and_is_never_forwarded(served: Served) -> None:
    url, upstream = served.url, served.upstream
    counted = errors(url, "header_too_large")
    before = upstream.requests
    status, headers, body = parsed(raw_exchange(url, get_with([("X-Big", "a" * (8 * KB))])))
    assert status == 431 and headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert body == {
        "error": "header_too_large",
        "detail": "the request header 'x-big' is 8201 bytes, over the limit of 8192 bytes a line "
        "(limits.header_line in routing.yaml); send a smaller header or raise the limit",
        "request_id": headers["x-request-id"],
    }
    assert upstream.requests == before
    # Just under the line limit goes through, whole.
    status, _, payload = parsed(raw_exchange(url, get_with([("X-Big", "a" * (8 * KB - 16))])))
    assert status == 200 and upstream.requests == before + 1
    assert [v for k, v in payload["headers"] if k == "x-big"] == ["a" * (8 * KB - 16)]
    assert errors(url, "header_too_large") == counted + 1


def test_headers_over_32_kb_in_all_get_431(served: Served) -> None:
    url, upstream = served.url, served.upstream
    before = upstream.requests
    status, _, body = parsed(raw_exchange(url, get_with([(f"X-Part-{i}", "b" * (7 * KB)) for i in range(5)])))
    assert status == 431 and body["error"] == "header_too_large"
    assert "over the limit of 32768 bytes (limits.headers in routing.yaml)" in body["detail"]
    assert upstream.requests == before
    status, _, _ = parsed(raw_exchange(url, get_with([(f"X-Part-{i}", "b" * (7 * KB)) for i in range(4)])))
    assert status == 200 and upstream.requests == before + 1


def test_a_request_target_over_8_kb_gets_414(served: Served) -> None:
    url, upstream = served.url, served.upstream
    before = upstream.requests
    status, _, body = parsed(raw_exchange(url, get_with([], target="/" + "t" * (8 * KB))))
    assert status == 414 and body["error"] == "uri_too_long"
    assert body["detail"].startswith("the request target is 8193 bytes, over the limit of 8192 bytes a line")
    assert upstream.requests == before


def test_a_20_mb_header_is_refused_as_it_arrives(served: Served) -> None:
    url, upstream = served.url, served.upstream
    counted = errors(url, "header_too_large")
    before = upstream.requests
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    answer = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /p HTTP/1.1\r\nHost: shop.example\r\nX-Huge: ")
            piece = b"h" * (64 * KB)
            while sent < 20 * KB * KB:
                sock.sendall(piece)
                sent += len(piece)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    # The façade stopped reading and closed long before the header ended (what it read is
    # bounded by the 32 KB limit plus one socket read; the rest sat in kernel buffers).
    assert sent < 20 * KB * KB
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")  # the answer may be lost to the reset
    assert upstream.requests == before
    assert errors(url, "header_too_large") == counted + 1


def test_an_http_0_9_request_line_gets_400(served: Served) -> None:
    url, upstream = served.url, served.upstream
    before = upstream.requests
    counted = errors(url, "bad_request")
    status, headers, body = parsed(raw_exchange(url, b"GET /\r\n\r\n"))
    assert status == 400 and headers["content-type"] == "application/json"
    assert body["error"] == "bad_request" and "no HTTP version (an HTTP/0.9 request)" in body["detail"]
    status, _, body = parsed(raw_exchange(url, b"THIS IS NOT HTTP\r\n\r\n"))
    assert status == 400 and body["error"] == "bad_request"
    assert upstream.requests == before
    assert errors(url, "bad_request") == counted + 2


def test_the_limits_come_from_routing_yaml_and_follow_a_reload(served: Served) -> None:
    url, config, upstream_url = served.url, served.config, served.upstream_url
    try:
        write_routing(config, upstream_url, "limits: {header_line: 1KB, headers: 4KB}\n")
        assert httpx.post(url + "/_strangler/reload", timeout=10).json()["ok"] is True
        line, _, line_body = parsed(raw_exchange(url, get_with([("X-Mid", "m" * 2000)])))
        total, _, total_body = parsed(raw_exchange(url, get_with([(f"X-Mid-{i}", "m" * 900) for i in range(5)])))
        fits, _, _ = parsed(raw_exchange(url, get_with([("X-Mid", "m" * 900)])))
    finally:
        write_routing(config, upstream_url)
        assert httpx.post(url + "/_strangler/reload", timeout=10).json()["ok"] is True
    assert line == 431 and "over the limit of 1024 bytes a line" in line_body["detail"]
    assert total == 431 and "over the limit of 4096 bytes" in total_body["detail"]
    assert fits == 200
    restored, _, _ = parsed(raw_exchange(url, get_with([("X-Mid", "m" * 2000)])))
    assert restored == 200


def test_limits_are_validated_with_their_position_and_fix() -> None:
    from facade.config import check_text

    text = 'upstreams: {monolith: {url: "http://127.0.0.1:8001"}}\nlimits: {header_line: 64KB, headers: 16KB}\ndefault: {to: monolith}\n'
    config, problems = check_text(text)
    assert config is None
    assert [str(problem) for problem in problems] == [
        "routing.yaml:2:9: limits.header_line (65536 bytes) is larger than limits.headers (16384 bytes), which bounds "
        "the whole head; raise headers or lower header_line."
    ]
    config, problems = check_text(text.replace("64KB", "4KB"))
    assert problems == [] and config is not None
    assert (config.limits.header_line, config.limits.headers) == (4096, 16384)
    defaults, _ = check_text(text.replace("limits: {header_line: 64KB, headers: 16KB}\n", ""))
    assert defaults is not None and (defaults.limits.header_line, defaults.limits.headers) == (8192, 32768)


class _Answering:
    """An ASGI app in front of the façade's proxy core (for its limits and refusals) that reads
    each request's body and answers 200 itself."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.bodies: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.bodies.append(size)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def _fed(tmp_path: Path, chunks: list[bytes], answered: int) -> tuple[bytes, _Answering]:
    """Feed `chunks` (one socket read each) to the façade's protocol, wait for `answered` responses."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from facade.app import create_app
    from facade.protocol import FacadeHttpProtocol

    write_routing(tmp_path / "routing.yaml", "http://127.0.0.1:9")

    async def run() -> tuple[bytes, _Answering]:
        app = _Answering(create_app(tmp_path / "routing.yaml", watch=False).proxy)
        config = Config(app, lifespan="off", log_level="warning", access_log=False)
        config.load()
        state = ServerState()
        protocol = FacadeHttpProtocol(config, state, {})
        transport = MemoryTransport()
        protocol.connection_made(transport)
        for chunk in chunks:
            protocol.data_received(chunk)
            if transport.closed:
                break
        async with asyncio.timeout(10):
            while len(app.bodies) < answered or state.tasks:
                await asyncio.sleep(0)  # yields to the request tasks; bounded by the timeout
        return transport.written, app

    return asyncio.run(run())


def test_a_long_header_line_split_over_two_reads_is_refused(tmp_path: Path) -> None:
    head = b"GET /p HTTP/1.1\r\nHost: shop.example\r\nX-Big: " + b"a" * 5000
    written, app = _fed(tmp_path, [head, b"a" * 5000 + b"\r\n\r\n"], answered=0)
    assert written.startswith(b"HTTP/1.1 431 ") and b"the request header 'x-big' is 10009 bytes" in written
    assert app.bodies == []


def test_a_pipelined_request_after_a_large_body_is_not_taken_for_a_large_head(tmp_path: Path) -> None:
    # One read ends a 60 KB body and starts the next request's head; the next read completes it.
    body = b"b" * (60 * KB)
    first = b"POST /p HTTP/1.1\r\nHost: shop.example\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    second = b"GET /q HTTP/1.1\r\nHost: shop.example\r\n"
    written, app = _fed(tmp_path, [first + second[:20], second[20:] + b"X-Small: 1\r\n\r\n"], answered=2)
    assert app.bodies == [60 * KB, 0]
    assert written.count(b"HTTP/1.1 200 ") == 2 and b" 431 " not in written
