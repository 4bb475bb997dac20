"""Timeouts, retries, circuit breakers and fallback, through real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from facade.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from facade.client import H1Client, Body, Upstream, UpstreamResponse
from facade.errors import UpstreamConnectError
from tests.facade.proxy_support import get, post, put, request, RawUpstream, echo, facade, ok_response, read_body, refused_url, serve, write_config


def test_slow_upstream_gets_504_at_the_route_timeout(tmp_path: Path) -> None:
    release = threading.Event()

    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await asyncio.to_thread(release.wait, 60)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"late"})

    routes = """
    - id: slow
      match: {path: /slow}
      to: monolith
      timeout: 300ms
    """
    try:
        with serve(slow) as up:
            config = write_config(tmp_path / "routing.yaml", {"monolith": up}, routes=routes)
            with facade(config) as (url, _):
                started = time.monotonic()
                response = get(url + "/slow", timeout=30)
                elapsed = time.monotonic() - started
            release.set()
    finally:
        release.set()
    assert response.status_code == 504
    body = response.json()
    assert body["error"] == "upstream_timeout" and body["request_id"] == response.headers["x-request-id"]
    assert "route's 0.3s" in body["detail"]
    # The budget is the route's 300 ms: without it the upstream's 10 s would apply.
    assert 0.3 <= elapsed < 5


def test_the_route_timeout_is_one_budget_for_all_attempts(tmp_path: Path) -> None:
    # Every attempt reaches the upstream, which resets the connection after 500 ms; a GET is
    # retried, so ten attempts would take 5 s. The route's 1.2 s stop them during the third.
    arrivals: list[float] = []

    def slow_reset(index: int, head: bytes, body: bytes) -> None:
        arrivals.append(time.monotonic())
        time.sleep(0.5)  # the upstream's slowness (in its own thread), not synchronisation

    routes = """
    - id: slow
      match: {path: /slow}
      to: monolith
      timeout: 1200ms
      retries: {attempts: 10}
    """
    with RawUpstream(slow_reset) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up.url}, routes=routes, extra="breaker: {failures: 100}")
        with facade(config) as (url, _):
            started = time.monotonic()
            response = get(url + "/slow", timeout=30)
            elapsed = time.monotonic() - started
    assert response.status_code == 504
    body = response.json()
    assert body["error"] == "upstream_timeout" and body["request_id"] == response.headers["x-request-id"]
    assert "route's 1.2s" in body["detail"]
    assert 1 <= len(arrivals) <= 3, arrivals  # cut off by the one budget, far short of 10 attempts
    assert 1.2 <= elapsed < 3.5


class GatedClient:
    """The real aiohttp client, recording attempts; after the first refused connection it lets
    the gated upstream start listening, so the retry finds it."""

    def __init__(self, gate: RawUpstream) -> None:
        self.inner = H1Client()
        self.gate = gate
        self.attempts: list[tuple[str, str, str]] = []

    async def request(self, upstream: Upstream, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: Body) -> UpstreamResponse:
        try:
            response = await self.inner.request(upstream, method, target, headers, body)
        except UpstreamConnectError:
            self.attempts.append((upstream.name, method, "refused"))
            self.gate.listen()
            raise
        self.attempts.append((upstream.name, method, "sent"))
        return response

    async def close_upstream(self, upstream: Upstream) -> None:
        await self.inner.close_upstream(upstream)

    async def aclose(self) -> None:
        await self.inner.aclose()


METHODS = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST", "PATCH"]
WITH_BODY = {"PUT", "POST", "PATCH"}


@pytest.mark.parametrize("method", METHODS)
def test_a_refused_connection_is_retried_whatever_the_method(tmp_path: Path, method: str) -> None:
    content = b"order-1" if method in WITH_BODY else b""
    with RawUpstream(lambda index, head, body: ok_response(b"" if method == "HEAD" else b"got " + body), listen=False) as gate:
        client = GatedClient(gate)
        config = write_config(tmp_path / "routing.yaml", {"monolith": gate.url})
        with facade(config, client=client) as (url, _):
            response = request(method, url + "/orders", content=content)
    assert response.status_code == 200
    assert client.attempts == [("monolith", method, "refused"), ("monolith", method, "sent")]
    ((head, body),) = gate.requests
    assert head.startswith(method.encode() + b" /orders ") and body == content


@pytest.mark.parametrize("method", METHODS)
def test_a_connection_reset_after_sending_is_retried_only_for_idempotent_methods(tmp_path: Path, method: str) -> None:
    # The first request is reset after the upstream read it: it reached the upstream.
    def behaviour(index: int, head: bytes, body: bytes) -> bytes | None:
        if index == 0:
            return None
        return b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n" + (b"" if method == "HEAD" else b"second try")

    content = b"an item" if method in WITH_BODY else b""
    with RawUpstream(behaviour) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up.url})
        with facade(config) as (url, _):
            response = request(method, url + "/items/1", content=content)
    sent = [(head.split(b" ", 1)[0].decode(), body) for head, body in up.requests]
    if method in {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"}:
        assert response.status_code == 200 and response.headers["content-length"] == "10"
        assert sent == [(method, content), (method, content)]
    else:
        assert response.status_code == 502 and response.json()["error"] == "upstream_error"
        assert sent == [(method, content)]  # reached the upstream once, not sent again


def test_idempotent_requests_are_not_retried_once_the_body_outgrew_the_replay_buffer(tmp_path: Path) -> None:
    routes = """
    - id: uploads
      match: {path: /files/**}
      to: monolith
      retries: {attempts: 3, replay_buffer: 1KB}
    """
    with RawUpstream(lambda index, head, body: None) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up.url}, routes=routes)
        with facade(config) as (url, _):
            small = put(url + "/files/a", content=iter([b"s" * 100, b"s" * 100]))
            small_tries = len(up.requests)
            big = put(url + "/files/b", content=iter([b"b" * 1000, b"b" * 1000, b"b" * 1000]))
            big_tries = len(up.requests) - small_tries
    assert small.status_code == 502 and small_tries == 3
    assert big.status_code == 502 and big_tries == 1


def test_breaker_opens_and_safe_requests_fall_back_to_the_monolith(tmp_path: Path) -> None:
    routes = """
    - id: catalog-read
      match: {path: /api/products/**}
      to: {monolith: 0, catalog: 100}
      retries: {attempts: 1}
      fallback: monolith
    """
    with serve(echo("monolith")) as monolith:
        catalog = refused_url()
        config = write_config(
            tmp_path / "routing.yaml", {"monolith": monolith, "catalog": catalog}, routes=routes,
            extra="breaker: {failures: 2, reset_after: 60s}",
        )
        recorder = Recorder()
        with facade(config, client=recorder) as (url, app):
            reads = [get(url + "/api/products/1") for _ in range(4)]
            write = post(url + "/api/products", content=b"{}")
            routes_view = get(url + "/_strangler/routes").json()
    assert [response.status_code for response in reads] == [200, 200, 200, 200]
    assert {response.json()["upstream"] for response in reads} == {"monolith"}
    # Two failures open the breaker; after that catalog is not even tried.
    assert [name for name, _ in recorder.attempts] == ["catalog", "monolith", "catalog", "monolith", "monolith", "monolith"]
    assert write.status_code == 503 and write.json()["error"] == "circuit_open"
    assert routes_view["breakers"]["catalog"] == "open"


class Recorder(H1Client):
    """The real aiohttp client, remembering which upstream each attempt went to."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[tuple[str, str]] = []

    async def request(self, upstream: Upstream, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: Body) -> UpstreamResponse:
        self.attempts.append((upstream.name, method))
        return await super().request(upstream, method, target, headers, body)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_gateway_error_from_the_new_service_falls_back_for_safe_methods(tmp_path: Path, status: int) -> None:
    # As nginx's proxy_next_upstream error timeout http_502 http_503 http_504: a 502/503/504
    # says the service could not handle the request; a 500 is its answer and goes to the client.
    async def failing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"catalog says %d" % status})

    routes = """
    - id: catalog-read
      match: {path: /api/products/**}
      to: {monolith: 0, catalog: 100}
      fallback: monolith
    """
    with serve(echo("monolith")) as monolith, serve(failing) as catalog:
        config = write_config(tmp_path / "routing.yaml", {"monolith": monolith, "catalog": catalog}, routes=routes)
        recorder = Recorder()
        with facade(config, client=recorder) as (url, _):
            read = get(url + "/api/products/1")
            head = request("HEAD", url + "/api/products/1")
            write = post(url + "/api/products", content=b"{}")
    if status == 500:
        assert read.status_code == 500 and read.text == "catalog says 500"
        assert head.status_code == 500
        assert recorder.attempts == [("catalog", "GET"), ("catalog", "HEAD"), ("catalog", "POST")]
    else:
        assert read.status_code == 200 and read.json()["upstream"] == "monolith"
        assert head.status_code == 200 and head.headers["x-upstream"] == "monolith"
        assert recorder.attempts == [("catalog", "GET"), ("monolith", "GET"), ("catalog", "HEAD"), ("monolith", "HEAD"), ("catalog", "POST")]
    # A write is never moved to another upstream: the client gets the service's own answer.
    assert write.status_code == status and write.text == f"catalog says {status}"


def test_breaker_probes_once_when_half_open_then_closes_or_reopens() -> None:
    now = [0.0]
    breaker = Breaker(failures=2, reset_after=10.0, clock=lambda: now[0])
    breaker.failure()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN and not breaker.allow()
    now[0] = 10.0
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.failure()
    assert breaker.state == OPEN and not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow() and breaker.allow()


class HungUpstream:
    """A TCP server that accepts connections, reads what comes and never answers."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self._sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def __enter__(self) -> HungUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
        for conn in self.accepted:
            conn.close()
        self._thread.join(5)


def test_a_hung_new_service_falls_back_within_the_route_budget(tmp_path: Path) -> None:
    # catalog accepts and never answers. Its own 1 s timeout bounds each wait for the response
    # head, so a GET is tried twice and then served by the monolith inside the route's 6 s;
    # without it the client would wait the whole 6 s and get a 504.
    with serve(echo("monolith")) as monolith, HungUpstream() as catalog:
        config = tmp_path / "routing.yaml"
        config.write_text(
            f"""version: 1
upstreams:
  monolith: {{url: "{monolith}", timeout: 10s}}
  catalog: {{url: "{catalog.url}", timeout: 1s}}
breaker: {{failures: 100}}
routes:
  - id: catalog-read
    match: {{path: /api/products/**}}
    to: {{monolith: 0, catalog: 100}}
    timeout: 6s
    retries: {{attempts: 2}}
    fallback: monolith
default: {{to: monolith}}
"""
        )
        recorder = Recorder()
        with facade(config, client=recorder) as (url, _):
            read = get(url + "/api/products/1", timeout=30)
            write = post(url + "/api/products", content=b"{}", timeout=30)
            metrics = get(url + "/_strangler/metrics").text
    assert read.status_code == 200 and read.json()["upstream"] == "monolith"
    assert recorder.attempts == [("catalog", "GET"), ("catalog", "GET"), ("monolith", "GET"), ("catalog", "POST")]
    # A write is not retried once it may have arrived, nor moved: the service's timeout answers it.
    assert write.status_code == 504
    assert write.json() == {
        "error": "upstream_timeout",
        "detail": "upstream 'catalog' sent no response head within its timeout of 1s",
        "request_id": write.headers["x-request-id"],
    }
    assert len(catalog.accepted) == 3  # each timed-out attempt dropped its connection
    assert 'strangler_errors_total{reason="upstream_timeout",route="catalog-read",upstream="catalog"} 1.0' in metrics
