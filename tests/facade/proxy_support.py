"""Helpers of the proxy tests: routing files, the façade under a real uvicorn, tiny upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import textwrap
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from facade.app import FacadeApp, create_app
from tests.support import free_port, serve, wait_for

Scope = dict[str, Any]


def get(url: str, **options: Any) -> httpx.Response:
    """httpx.get without loading CA certificates (all tests speak plain HTTP on loopback)."""
    return httpx.get(url, verify=False, **options)


def post(url: str, **options: Any) -> httpx.Response:
    return httpx.post(url, verify=False, **options)


def put(url: str, **options: Any) -> httpx.Response:
    return httpx.put(url, verify=False, **options)


def request(method: str, url: str, **options: Any) -> httpx.Response:
    return httpx.request(method, url, verify=False, **options)


def client(**options: Any) -> httpx.Client:
    return httpx.Client(verify=False, **options)


def write_config(path: Path, upstreams: dict[str, str], *, routes: str = "", extra: str = "", default: str = "monolith", default_timeout: str = "10s") -> Path:
    """A routing file with these upstream URLs, `routes` (YAML list items) and extra top-level keys."""
    lines = ["version: 1", "upstreams:"]
    for name, url in upstreams.items():
        lines.append(f"  {name}: {{url: \"{url}\", connect_timeout: 1s, timeout: 10s, pool: 20}}")
    if routes:
        lines.append("routes:")
        lines.append(textwrap.indent(textwrap.dedent(routes).strip("\n"), "  "))
    if extra:
        lines.append(textwrap.dedent(extra).strip("\n"))
    lines.append(f"default: {{to: {default}, timeout: {default_timeout}}}")
    text = "\n".join(lines) + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


@contextlib.contextmanager
def facade(config: Path, **options: Any) -> Iterator[tuple[str, FacadeApp]]:
    """The façade for `config` under a real uvicorn on loopback: (base URL, app)."""
    options.setdefault("watch_interval", 0.1)
    app = create_app(config, **options)
    with serve(app, server_header=False, date_header=False, proxy_headers=False) as url:
        yield url, app


async def read_body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def echo(name: str) -> Any:
    """An upstream answering with JSON describing the request it got (headers as pairs)."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        payload = json.dumps(
            {
                "upstream": name,
                "method": scope["method"],
                "raw_path": scope["raw_path"].decode("latin-1"),
                "query_string": scope["query_string"].decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
                "body_length": len(body),
            }
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), (b"x-upstream", name.encode())]})
        await send({"type": "http.response.body", "body": payload})

    return app


def header_values(payload: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in payload["headers"] if key == name]


class RawUpstream:
    """A TCP server speaking just enough HTTP/1.1 to misbehave on purpose, in its own thread.

    `behaviour(index, head, body)` returns the bytes to write (None: reset the connection after
    reading the request). The socket is bound at once but only listens after `listen()`, so
    until then connecting to it is refused.
    """

    def __init__(self, behaviour: Callable[[int, bytes, bytes], bytes | None], *, listen: bool = True) -> None:
        self.behaviour = behaviour
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.AbstractServer | None = None
        if listen:
            self.listen()

    def listen(self) -> None:
        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, sock=self._sock)

        asyncio.run_coroutine_threadsafe(start(), self._loop).result(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                index = len(self.requests)
                self.requests.append((head, body))
                answer = self.behaviour(index, head, body)
                if answer is None:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    writer.transport.abort()
                    return
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower():
                    writer.close()
                    return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._sock.close()

    def __enter__(self) -> RawUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ok_response(body: bytes = b"ok", *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def refused_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


__all__ = ["RawUpstream", "client", "echo", "facade", "get", "post", "put", "request", "header_values", "ok_response", "read_body", "refused_url", "serve", "wait_for", "write_config"]
