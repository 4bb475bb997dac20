"""Forwarding rules of the proxy core, through real sockets (uvicorn upstreams, the façade)."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.facade.proxy_support import client, get, post, put, echo, facade, header_values, read_body, serve, write_config


def raw_exchange(base_url: str, request: bytes) -> bytes:
    """Send raw bytes, read until the server closes (requests carry `Connection: close`)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_hop_by_hop_headers_are_dropped_both_ways_including_those_named_in_connection(tmp_path: Path) -> None:
    async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        body = json.dumps([[k.decode(), v.decode()] for k, v in scope["headers"]]).encode()
        await send({
            "type": "http.response.start", "status": 200,
            "headers": [(b"connection", b"x-hop-down"), (b"x-hop-down", b"1"), (b"keep-alive", b"timeout=5"),
                        (b"proxy-authenticate", b"Basic"), (b"x-kept", b"yes")],
        })
        await send({"type": "http.response.body", "body": body})

    with serve(upstream) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            response = get(
                url + "/hop",
                headers={
                    "Connection": "keep-alive, X-Hop-Up", "X-Hop-Up": "secret", "Keep-Alive": "timeout=9",
                    "TE": "trailers", "Trailer": "X-Checksum", "Proxy-Authorization": "Basic eA==",
                    "Proxy-Connection": "keep-alive", "X-End-To-End": "kept",
                },
            )
    assert response.status_code == 200
    seen = {name for name, _ in response.json()}
    for dropped in ("x-hop-up", "keep-alive", "te", "trailer", "proxy-authorization", "proxy-connection", "transfer-encoding", "upgrade"):
        assert dropped not in seen
    assert "x-end-to-end" in seen
    assert [name for name in seen if name == "connection"] == []
    assert response.headers["x-kept"] == "yes"
    for dropped in ("x-hop-down", "keep-alive", "proxy-authenticate"):
        assert dropped not in response.headers


def test_forwarded_headers_are_set_and_host_is_the_upstreams(tmp_path: Path) -> None:
    with serve(echo("monolith")) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            got = get(url + "/x", headers={"X-Forwarded-For": "203.0.113.7", "Host": "shop.example"}).json()
            plain = get(url + "/x").json()
    assert header_values(got, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1"]
    assert header_values(got, "x-forwarded-proto") == ["http"]
    assert header_values(got, "x-forwarded-host") == ["shop.example"]
    assert header_values(got, "host") == [up.removeprefix("http://")]
    assert header_values(plain, "x-forwarded-for") == ["127.0.0.1"]


def test_raw_path_and_query_pass_byte_for_byte(tmp_path: Path) -> None:
    # Canonical (no dot segments, no needless or separator escapes: those are refused, see
    # test_non_canonical_paths_are_refused...), yet nothing a normalising client would leave alone.
    target = b"/api/~user/caf%C3%A9/x%20y/%25/a+b;v=1/?x=1&x=2&y=%2F+%20&empty=&flag&z=../%7E"
    with serve(echo("monolith")) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            answer = raw_exchange(url, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    payload = json.loads(body)
    assert payload["raw_path"].encode("latin-1") + b"?" + payload["query_string"].encode("latin-1") == target


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out += rest[:size]
        data = rest[size + 2 :]


def test_repeated_response_headers_and_every_set_cookie_are_kept(tmp_path: Path) -> None:
    async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await send({
            "type": "http.response.start", "status": 200,
            "headers": [(b"set-cookie", b"a=1; Path=/"), (b"set-cookie", b"b=2; HttpOnly"), (b"x-multi", b"one"), (b"x-multi", b"two")],
        })
        await send({"type": "http.response.body", "body": b"ok"})

    with serve(upstream) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            response = get(url + "/cookies")
    assert response.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
    assert response.headers.get_list("x-multi") == ["one", "two"]


def test_head_204_and_304_carry_no_body_on_a_kept_alive_connection(tmp_path: Path) -> None:
    async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        path = scope["path"]
        if path == "/204":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/304":
            await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", b'"v1"')]})
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else b"hello"})

    with serve(upstream) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            host, port = url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            results = []
            for method, path in (("HEAD", "/len"), ("GET", "/204"), ("GET", "/304"), ("GET", "/len")):
                conn.request(method, path, headers={"If-None-Match": '"v1"'} if path == "/304" else {})
                response = conn.getresponse()
                results.append((response.status, response.getheader("content-length"), response.read()))
            conn.close()
            # A stray body byte would have broken the parsing of the responses that follow.
            raw = raw_exchange(url, b"HEAD /len HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert results == [(200, "5", b""), (204, None, b""), (304, None, b""), (200, "5", b"hello")]
    assert raw.endswith(b"\r\n\r\n") and raw.lower().count(b"content-length: 5") == 1


def test_redirects_are_passed_untouched(tmp_path: Path) -> None:
    async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        await send({"type": "http.response.start", "status": 302, "headers": [(b"location", b"http://other.example/login?next=%2Fa%20b")]})
        await send({"type": "http.response.body", "body": b""})

    with serve(upstream) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            response = get(url + "/account", follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == "http://other.example/login?next=%2Fa%20b"


def test_request_id_and_traceparent_are_passed_or_created(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="strangler.access")
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with serve(echo("monolith")) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            given = get(url + "/t", headers={"X-Request-ID": "req-123", "traceparent": parent})
            created = get(url + "/t")
            malformed = get(url + "/t", headers={"traceparent": "00-zz-bad-01"})
    assert given.headers["x-request-id"] == "req-123"
    assert header_values(given.json(), "x-request-id") == ["req-123"]
    assert header_values(given.json(), "traceparent") == [parent]
    request_id = created.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert header_values(created.json(), "x-request-id") == [request_id]
    for response in (created, malformed):
        (traceparent,) = header_values(response.json(), "traceparent")
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", traceparent)
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "strangler.access"]
    assert {line["request_id"] for line in lines} >= {"req-123", request_id}
    line = next(line for line in lines if line["request_id"] == "req-123")
    assert line["method"] == "GET" and line["path"] == "/t" and line["route"] == "default" and line["upstream"] == "monolith"
    assert line["status"] == 200 and line["error"] is None and line["duration_ms"] > 0 and line["bytes_out"] > 0
    assert set(line) == {"ts", "request_id", "method", "path", "route", "upstream", "status", "duration_ms", "upstream_ms", "bytes_in", "bytes_out", "error"}


def test_anonymous_clients_get_a_sticky_assignment_cookie_and_testers_can_override(tmp_path: Path) -> None:
    routes = """
    - id: split
      match: {path: /api/**}
      to: {monolith: 50, catalog: 50}
    """
    with serve(echo("monolith")) as monolith, serve(echo("catalog")) as catalog:
        config = write_config(tmp_path / "routing.yaml", {"monolith": monolith, "catalog": catalog}, routes=routes)
        with facade(config) as (url, _):
            seen: dict[str, set[str]] = {}
            for _ in range(12):
                with client(base_url=url) as session:
                    first = session.get("/api/x")
                    cookie = first.cookies["strangler_id"]
                    assert "Max-Age=" in first.headers["set-cookie"]
                    upstreams = {first.json()["upstream"]} | {session.get("/api/x").json()["upstream"] for _ in range(3)}
                    assert len(upstreams) == 1
                    seen[cookie] = upstreams
            assert {next(iter(value)) for value in seen.values()} == {"monolith", "catalog"}
            forced = {get(url + "/api/x", headers={"X-Strangler-Upstream": "catalog"}).json()["upstream"] for _ in range(6)}
            unknown = get(url + "/api/x", headers={"X-Strangler-Upstream": "elsewhere"})
            unsplit = get(url + "/other")
    assert forced == {"catalog"}
    assert unknown.status_code == 200 and unknown.json()["upstream"] in ("monolith", "catalog")
    assert "set-cookie" not in unsplit.headers


def test_request_bodies_reach_the_upstream_whole(tmp_path: Path) -> None:
    with serve(echo("monolith")) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            small = post(url + "/p", content=b"x" * 10)
            streamed = put(url + "/p", content=iter([b"a" * 70000] * 5))
            empty = post(url + "/p")
    assert small.json()["body_length"] == 10
    assert streamed.json()["body_length"] == 350000
    assert empty.json()["body_length"] == 0 and header_values(empty.json(), "content-length") == ["0"]


def test_malformed_requests_get_4xx_and_the_facade_keeps_serving(tmp_path: Path) -> None:
    with serve(echo("monolith")) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            garbage = raw_exchange(url, b"THIS IS NOT HTTP\r\n\r\n")
            bad_header = raw_exchange(url, b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\nConnection: close\r\n\r\n")
            star = raw_exchange(url, b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            after = get(url + "/still")
    assert garbage.startswith(b"HTTP/1.1 400")
    assert bad_header.startswith(b"HTTP/1.1 400")
    assert re.match(rb"HTTP/1.1 4\d\d", star)
    assert after.status_code == 200


def test_upstream_connections_are_kept_alive_and_bounded_by_the_pool(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.facade.proxy_support import RawUpstream, ok_response

    with RawUpstream(lambda index, head, body: ok_response(b"pooled")) as up:
        config = tmp_path / "routing.yaml"
        config.write_text(f'upstreams:\n  monolith: {{url: "{up.url}", pool: 2}}\ndefault: {{to: monolith}}\n')
        with facade(config) as (url, _):
            with client(base_url=url) as session:
                sequential = [session.get("/one").text for _ in range(5)]
                after_sequential = up.connections
                with ThreadPoolExecutor(8) as pool:
                    concurrent = list(pool.map(lambda i: session.get(f"/many/{i}").status_code, range(40)))
    assert sequential == ["pooled"] * 5 and after_sequential == 1
    assert concurrent == [200] * 40
    assert up.connections <= 2


def test_responses_delimited_by_closing_the_connection_arrive_whole(tmp_path: Path) -> None:
    from tests.facade.proxy_support import RawUpstream

    body = b"until-eof " * 5000
    with RawUpstream(lambda index, head, _: b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n" + body) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up.url})
        with facade(config) as (url, _):
            first = get(url + "/eof")
            second = get(url + "/eof")
    assert first.content == body and second.content == body
    assert up.connections == 2


OVERRIDE_ROUTES = """
- id: split
  match: {path: /api/**}
  to: {monolith: 100, catalog: 0}
  shadow: {to: candidate}
- id: sandboxed
  match: {path: /sandbox/**}
  to: sandbox
"""


def test_the_override_header_selects_only_among_the_routes_upstreams_and_shadow_target(tmp_path: Path) -> None:
    names = ("monolith", "catalog", "candidate", "sandbox")
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(serve(echo(name))) for name in names}
        config = write_config(tmp_path / "routing.yaml", urls, routes=OVERRIDE_ROUTES)
        with facade(config, addons=[]) as (url, _):
            def forced(path: str, name: str) -> str:
                return get(url + path, headers={"X-Strangler-Upstream": name}).json()["upstream"]

            weight_zero = forced("/api/x", "catalog")
            shadow_target = forced("/api/x", "candidate")
            other_routes = forced("/api/x", "sandbox")
            on_default = forced("/elsewhere", "catalog")
    assert weight_zero == "catalog"  # a tester may try the route's 0% upstream before the shift
    assert shadow_target == "candidate"
    assert other_routes == "monolith"  # declared, but not this route's: ignored
    assert on_default == "monolith"


def test_off_loopback_the_override_header_needs_the_admin_token_or_the_override_secret(tmp_path: Path) -> None:
    names = ("monolith", "catalog", "candidate", "sandbox")
    env = {"STRANGLER_ADMIN_TOKEN": "admin-s3cret", "TESTER_SECRET": "tester-s3cret"}
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(serve(echo(name))) for name in names}
        config = write_config(tmp_path / "routing.yaml", urls, routes=OVERRIDE_ROUTES, extra="assignment: {override_token_env: TESTER_SECRET}")
        seen = SeenHeaders()
        # Built as for a non-loopback bind (the test still connects over loopback).
        with facade(config, addons=[seen], host="0.0.0.0", env=env) as (url, _):
            def sent(token: str | None) -> dict[str, Any]:
                headers = {"X-Strangler-Upstream": "catalog"}
                if token is not None:
                    headers["X-Strangler-Token"] = token
                return get(url + "/api/x", headers=headers).json()

            bare, wrong, admin, tester = sent(None), sent("guess"), sent("admin-s3cret"), sent("tester-s3cret")
    assert bare["upstream"] == "monolith" and wrong["upstream"] == "monolith"
    assert admin["upstream"] == "catalog" and tester["upstream"] == "catalog"
    # The secret never travels upstream, nor reaches an addon (a shadow mirror, the recorder).
    assert all(header_values(payload, "x-strangler-token") == [] for payload in (bare, wrong, admin, tester))
    assert len(seen.names) == 4 and all(b"x-strangler-token" not in names for names in seen.names)
    assert all(b"x-strangler-upstream" in names for names in seen.names)


class SeenHeaders:
    """An addon keeping the request header names of every flow it sees."""

    def __init__(self) -> None:
        self.names: list[set[bytes]] = []

    def request_finished(self, flow: Any) -> None:
        self.names.append({name for name, _ in flow.request_headers})


def test_a_client_sent_mirror_marker_is_stripped(tmp_path: Path) -> None:
    with serve(echo("monolith")) as up:
        config = write_config(tmp_path / "routing.yaml", {"monolith": up})
        with facade(config) as (url, _):
            payload = get(url + "/p", headers={"X-Strangler-Shadow": "1", "X-Other": "kept"}).json()
    assert header_values(payload, "x-strangler-shadow") == []
    assert header_values(payload, "x-other") == ["kept"]


class _Received:
    """A response already read, handed to http.client as if it were a socket."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, *args: Any, **kwargs: Any) -> io.BytesIO:
        return io.BytesIO(self.data)


def parsed(response: bytes) -> tuple[int, dict[str, str], Any]:
    """(status, headers by lower-case name, JSON body or None) of a response read off a socket."""
    reply = http.client.HTTPResponse(_Received(response))  # type: ignore[arg-type]
    reply.begin()
    body = reply.read()
    return reply.status, {k.lower(): v for k, v in reply.getheaders()}, json.loads(body) if body else None


def _json_of(response: bytes) -> tuple[int, Any]:
    status, _, body = parsed(response)
    return status, body


def test_non_canonical_paths_are_refused_and_never_reach_a_route_or_the_admin_api(tmp_path: Path) -> None:
    routes = """
    - id: catalog-read
      match: {path: /api/products/**}
      to: catalog
    """
    with serve(echo("monolith")) as monolith, serve(echo("catalog")) as catalog:
        config = write_config(tmp_path / "routing.yaml", {"monolith": monolith, "catalog": catalog}, routes=routes)
        with facade(config) as (url, _):
            def sent(target: bytes) -> bytes:
                return raw_exchange(url, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")

            escape = _json_of(sent(b"/api/products/../../admin"))
            encoded_dots = _json_of(sent(b"/api/products/%2e%2e/%2E%2E/admin"))
            admin = _json_of(sent(b"/%5f%73trangler/routes"))
            admin_dots = _json_of(sent(b"/api/../_strangler/routes"))
            slash = _json_of(sent(b"/api/products%2F7"))
            canonical = _json_of(sent(b"/api/products/a%20b/%C3%A9?q=%5f&r=../x"))
            well_known = _json_of(sent(b"/.well-known/security.txt"))
            metrics = get(url + "/_strangler/metrics").text
    assert escape == (400, {
        "error": "bad_request",
        "detail": "the path '/api/products/../../admin' has a dot segment ('.' or '..'), which the façade does not resolve; send it as '/admin'",
        "request_id": escape[1]["request_id"],
    })
    assert encoded_dots[0] == 400 and "percent-encodes '.' (%2e), which needs no encoding; send it as '/admin'" in encoded_dots[1]["detail"]
    assert admin[0] == 400 and "send it as '/_strangler/routes'" in admin[1]["detail"]
    assert admin_dots[0] == 400 and "send it as '/_strangler/routes'" in admin_dots[1]["detail"]
    assert slash[0] == 400 and "encoded '/' (%2F)" in slash[1]["detail"]
    # A canonical path goes up byte for byte, escapes and all; the query string is not a path.
    assert canonical[0] == 200 and canonical[1]["upstream"] == "catalog"
    assert canonical[1]["raw_path"] == "/api/products/a%20b/%C3%A9" and canonical[1]["query_string"] == "q=%5f&r=../x"
    assert well_known[0] == 200 and well_known[1]["raw_path"] == "/.well-known/security.txt"
    assert 'strangler_errors_total{reason="bad_request",route="default",upstream=""} 5.0' in metrics
