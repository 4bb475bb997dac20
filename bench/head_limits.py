"""What the request-head limits cost: the façade's HTTP protocol against uvicorn's own.

Both protocols are fed the same typical request (a GET with five headers) on one keep-alive
connection, with a trivial ASGI app behind them, in interleaved rounds; CPU time per request is
measured (process time, so other processes on a shared host count less). Printed: each
protocol's median microseconds per request, the difference, and the ratio, median of the
per-round ratios.

    .venv/bin/python bench/head_limits.py [--rounds 11] [--requests 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uvicorn.config import Config  # noqa: E402
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from facade.app import create_app  # noqa: E402
from facade.protocol import FacadeHttpProtocol  # noqa: E402

REQUEST = (
    b"GET /api/products/17?x=1 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: bench/1.0\r\n"
    b"Accept: application/json\r\nCookie: strangler_id=abcdef0123456789; sessionid=xyz\r\n"
    b"X-Request-ID: 0123456789abcdef0123456789abcdef\r\n\r\n"
)


class MemoryTransport(asyncio.Transport):
    """The socket's side of a server protocol, keeping what is written (also used by the tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.writes: list[bytes] = []

    @property
    def written(self) -> bytes:
        return b"".join(self.writes)

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _App:
    """Answers at once; carries the façade's proxy core, where the protocol reads its limits."""

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def _round(protocol_class: type[HttpToolsProtocol], app: _App, requests: int) -> float:
    config = Config(app, lifespan="off", log_level="warning", access_log=False)
    config.load()
    state = ServerState()
    protocol = protocol_class(config, state, {})
    protocol.connection_made(MemoryTransport())
    started = time.process_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        while state.tasks:
            await asyncio.sleep(0)
    return (time.process_time() - started) / requests * 1e6


async def _main(rounds: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "routing.yaml"
        config.write_text('upstreams: {monolith: {url: "http://127.0.0.1:9"}}\ndefault: {to: monolith}\n')
        app = _App(create_app(config, watch=False).proxy)
        plain: list[float] = []
        limited: list[float] = []
        for _ in range(rounds):
            plain.append(await _round(HttpToolsProtocol, app, requests))
            limited.append(await _round(FacadeHttpProtocol, app, requests))
    ratio = statistics.median(b / a for a, b in zip(plain, limited))
    print(f"uvicorn httptools protocol: {statistics.median(plain):.2f} µs CPU per request (median of {rounds} rounds)")
    print(f"façade protocol (limits):   {statistics.median(limited):.2f} µs CPU per request")
    print(f"difference: {statistics.median(limited) - statistics.median(plain):+.2f} µs; ratio {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--requests", type=int, default=30000)
    options = parser.parse_args()
    uvloop.run(_main(options.rounds, options.requests))


if __name__ == "__main__":
    main()
