"""The upstream HTTP client: one small interface, two implementations.

`H1Client` (the default) speaks HTTP/1.1 itself over asyncio protocols with httptools' llhttp
parser: the request head is written straight from the byte pairs the proxy holds, the response is
handed over chunk by chunk, keep-alive connections are pooled per upstream. Measured per request
on the same machine it costs well under aiohttp's client (see the README's façade section and
bench/proxy.py), which matters because the client is most of the proxy's work.

`AiohttpClient` is the alternative (per upstream a `ClientSession` with a bounded keep-alive pool,
no cookie jar, no decompression, no redirect following, no automatically added headers, targets
pre-encoded with `yarl.URL(..., encoded=True)`); plain httpx was measured far behind both.

Either way the path and query reach the upstream byte for byte, and errors come out as
`facade.errors.UpstreamError` subclasses, `UpstreamConnectError` when nothing was sent.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import httptools
import yarl
from multidict import CIMultiDict

from facade.config import UpstreamConfig
from facade.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout

__all__ = ["AiohttpClient", "Body", "H1Client", "Upstream", "UpstreamClient", "UpstreamResponse"]

Body = bytes | AsyncIterable[bytes] | None
Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True, eq=False)
class Upstream:
    """A declared upstream as the proxy uses it; lives as long as its config is unchanged.

    `handle` belongs to the client (its connection pool). `inflight` counts requests using it so a
    reload closes the pool of a removed or changed upstream only after they finished.
    """

    name: str
    config: UpstreamConfig
    inflight: int = 0
    retired: bool = False
    handle: Any = None
    host_header: bool = True  # H1Client writes the upstream's Host; False: the headers carry one


class UpstreamResponse(Protocol):
    """A response whose head has arrived; the body is read chunk by chunk."""

    status: int
    headers: Headers

    async def read(self) -> bytes:
        """The next piece of the body as it arrives, b"" at its end; raises `UpstreamError` when
        the upstream breaks off."""
        ...

    def close(self, *, reuse: bool) -> None:
        """Release the connection: back to the pool when the body was read (`reuse`), else drop it."""
        ...


class UpstreamClient(Protocol):
    """Sends one request to an upstream. Errors are `facade.errors.UpstreamError` subclasses."""

    async def request(self, upstream: Upstream, method: str, target: bytes, headers: Headers, body: Body) -> UpstreamResponse:
        """Send `method target` (raw path and query, sent as is) with these headers (Host
        excluded: the client sets the upstream's) and body."""
        ...

    async def close_upstream(self, upstream: Upstream) -> None:
        """The upstream is gone from the config and idle: free its connections."""
        ...

    async def aclose(self) -> None: ...


_SKIP_AUTO_HEADERS = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})


class _AiohttpResponse:
    __slots__ = ("status", "headers", "_response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = list(response.raw_headers)

    async def read(self) -> bytes:
        try:
            return await self._response.content.readany()
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout("the upstream stopped sending the response body") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"the upstream broke off the response body: {exc!r}") from exc

    def close(self, *, reuse: bool) -> None:
        if reuse:
            self._response.release()
        else:
            self._response.close()


class AiohttpClient:
    """`UpstreamClient` over aiohttp: a session (connection pool) per upstream, made on first use."""

    def __init__(self, *, max_field_size: int = 65536) -> None:
        self.max_field_size = max_field_size
        self._sessions: set[aiohttp.ClientSession] = set()

    def _session(self, upstream: Upstream) -> aiohttp.ClientSession:
        config = upstream.config
        connector = aiohttp.TCPConnector(limit=config.pool, limit_per_host=0, ttl_dns_cache=300, force_close=False)
        session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=config.connect_timeout, sock_read=config.timeout),
            requote_redirect_url=False,
            trust_env=False,
            max_line_size=self.max_field_size,
            max_field_size=self.max_field_size,
        )
        # The proxy owns the retry policy (attempts, replay buffer); aiohttp's own silent retry of
        # idempotent requests would send them once more than configured.
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        upstream.handle = (session, config.url)
        self._sessions.add(session)
        return session

    async def request(self, upstream: Upstream, method: str, target: bytes, headers: Headers, body: Body) -> UpstreamResponse:
        handle = upstream.handle
        if handle is None:
            session, base = self._session(upstream), upstream.config.url
        else:
            session, base = handle
        url = yarl.URL(base + target.decode("latin-1"), encoded=True)
        header_map: CIMultiDict[str] = CIMultiDict([(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers])
        try:
            response = await session.request(
                method, url, headers=header_map, data=body, allow_redirects=False, compress=None, chunked=None
            )
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(f"cannot connect to upstream {upstream.name!r} at {base}: {exc.os_error}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamConnectError(f"connecting to upstream {upstream.name!r} at {base} timed out") from exc
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout(f"upstream {upstream.name!r} did not answer within {upstream.config.timeout}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"upstream {upstream.name!r} failed: {exc!r}") from exc
        return _AiohttpResponse(response)

    async def close_upstream(self, upstream: Upstream) -> None:
        handle, upstream.handle = upstream.handle, None
        if handle is not None:
            session = handle[0]
            self._sessions.discard(session)
            await session.close()

    async def aclose(self) -> None:
        sessions, self._sessions = self._sessions, set()
        for session in sessions:
            await session.close()


# --------------------------------------------------------------------------------------------
# HTTP/1.1 over asyncio protocols, parsed by httptools (llhttp): the default client.


_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_IDLE_LIMIT = 4.0  # seconds an idle connection is kept: below common upstream keep-alive timeouts (uvicorn 5 s)
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream; also the response being read on it."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.busy = False
        self.idle_since = 0.0
        self.writing_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: Headers = []
        self.head: asyncio.Future[None] | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.reading_paused = False
        self.complete = False
        self.eof_body = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.head_only = False
        self.keep_alive = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self.shut()  # nothing is expected on an idle connection
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"upstream {self.pool.name!r} sent an invalid response: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            if self.eof_body and exc is None and self.status:
                self.complete = True
                self._wake()
            else:
                self._fail(UpstreamError(f"upstream {self.pool.name!r} closed the connection" + (f": {exc}" if exc else "")))
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self.headers = []  # 1xx (e.g. 103 Early Hints): the real response follows
            return
        self.status = status
        # Asked now: llhttp resets its flags once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()
        framed = False
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length" or (lower == b"transfer-encoding" and b"chunked" in value.lower()):
                framed = True
        self.eof_body = not framed
        if self.head_only:
            # llhttp does not know the request was HEAD; there is no body, and the connection is
            # not reused since the parser would expect one.
            self.complete = True
            self.pool.discard_after_use(self)
        head = self.head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status:
            self.complete = True
            self._wake()

    # -- the exchange --------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        head = self.head
        if head is not None and not head.done():
            head.set_exception(error)
        self._wake()

    async def _drain(self) -> None:
        if self.writing_paused and not self.closed:
            self.drain_waiter = self.loop.create_future()
            await self.drain_waiter
            self.drain_waiter = None
        if self.closed:
            raise UpstreamError(f"upstream {self.pool.name!r} closed the connection while the request was sent")

    async def exchange(self, method: str, target: bytes, headers: Headers, body: Body) -> None:
        """Send the request, wait for the response head."""
        self._reset()
        self.busy = True
        self.head_only = method == "HEAD"
        transport = self.transport
        assert transport is not None
        has_length = False
        for name, _ in headers:
            if name == b"content-length":
                has_length = True
                break
        parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n", self.pool.host_line]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        self.head = head = self.loop.create_future()
        if body is None or isinstance(body, bytes):
            if body and not has_length:
                parts.append(b"content-length: %d\r\n" % len(body))
            elif not body and not has_length and method not in _NO_BODY_METHODS:
                parts.append(b"content-length: 0\r\n")
            parts.append(b"\r\n")
            if body:
                parts.append(body)
            transport.write(b"".join(parts))
        else:
            chunked = not has_length
            if chunked:
                parts.append(b"transfer-encoding: chunked\r\n")
            parts.append(b"\r\n")
            transport.write(b"".join(parts))
            async for chunk in body:
                if head.done() or self.closed:
                    # The upstream answered (or went away) before taking the whole body.
                    self.pool.discard_after_use(self)
                    break
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    if self.writing_paused:
                        await self._drain()
            else:
                if chunked and not self.closed:
                    transport.write(b"0\r\n\r\n")
        if self.closed and not head.done():
            raise self.error or UpstreamError(f"upstream {self.pool.name!r} closed the connection")
        await head

    async def read(self) -> bytes:
        chunks = self.chunks
        while not chunks:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            self.waiter = waiter = self.loop.create_future()
            timer = self.loop.call_later(self.pool.read_timeout, self._timed_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.waiter = None
        data = chunks.popleft()
        self.buffered -= len(data)
        if self.reading_paused and self.buffered < _LOW_WATER and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamTimeout(f"upstream {self.pool.name!r} sent nothing for {self.pool.read_timeout:g}s"))

    def close(self, *, reuse: bool = False) -> None:
        """Back to the pool when the response was read to its end (`reuse`), else closed."""
        self.pool.release(self, reuse and self.complete and not self.chunks and self.error is None)

    def shut(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Response:
    """The response on a connection, as `UpstreamResponse`."""

    __slots__ = ("status", "headers", "_conn")

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.headers = conn.headers

    def read(self) -> Any:
        conn = self._conn
        if conn is None:
            raise UpstreamError("the response was already closed")
        return conn.read()

    def close(self, *, reuse: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(reuse=reuse)


class _Pool:
    """Keep-alive connections to one upstream, at most `pool` open at once."""

    def __init__(self, upstream: Upstream, loop: asyncio.AbstractEventLoop) -> None:
        config = upstream.config
        url = yarl.URL(config.url)
        self.name = upstream.name
        self.loop = loop
        self.host = url.raw_host or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None
        netloc = config.url.split("://", 1)[1].split("/", 1)[0]
        self.host_line = b"host: " + netloc.encode("idna" if not netloc.isascii() else "ascii") + b"\r\n" if upstream.host_header else b""
        self.limit = config.pool
        self.connect_timeout = config.connect_timeout
        self.read_timeout = config.timeout
        self.idle: list[_Connection] = []
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self.closed = False
        self._discard: set[_Connection] = set()

    async def acquire(self) -> _Connection:
        now = time.monotonic()
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < _IDLE_LIMIT:
                return conn
            self._drop(conn)
        if self.open >= self.limit:
            waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                conn_or_slot = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self.release(waiter.result(), True)  # type: ignore[arg-type]
                elif waiter.done() and not waiter.cancelled():
                    self.open -= 1
                    self._wake()
                raise
            if conn_or_slot is not None:
                return conn_or_slot
        else:
            self.open += 1
        try:
            return await self._connect()
        except BaseException:
            self.open -= 1
            self._wake()
            raise

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl
                )
        except TimeoutError as exc:
            raise UpstreamConnectError(f"connecting to upstream {self.name!r} at {self.host}:{self.port} timed out after {self.connect_timeout:g}s") from exc
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to upstream {self.name!r} at {self.host}:{self.port}: {exc.strerror or exc}") from exc
        return protocol

    def discard_after_use(self, conn: _Connection) -> None:
        self._discard.add(conn)

    def release(self, conn: _Connection, reuse: bool) -> None:
        conn.busy = False
        if conn in self._discard:
            self._discard.discard(conn)
            reuse = False
        if reuse and not conn.closed and not self.closed and conn.keep_alive:
            conn.waiter = None
            while self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
            return
        conn.shut()
        self.open -= 1
        self._wake()

    def _drop(self, conn: _Connection) -> None:
        conn.shut()
        self.open -= 1

    def _wake(self) -> None:
        # A slot is free: the first live waiter connects itself.
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.open += 1
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.shut()
        self.open -= len(self.idle)
        self.idle = []


class H1Client:
    """`UpstreamClient` speaking HTTP/1.1 itself: asyncio protocols and httptools' parser.

    Per upstream a pool of at most `pool` keep-alive connections. The request head is written
    from the byte pairs as they are (one write with a small body), the response is parsed by
    llhttp and handed over chunk by chunk with flow control both ways. The upstream's `timeout`
    bounds each wait for response body data; the proxy's deadline bounds the rest.
    """

    def __init__(self) -> None:
        self._pools: set[_Pool] = set()

    async def request(self, upstream: Upstream, method: str, target: bytes, headers: Headers, body: Body) -> UpstreamResponse:
        pool: _Pool | None = upstream.handle
        if pool is None or pool.closed:
            pool = upstream.handle = _Pool(upstream, asyncio.get_running_loop())
            self._pools.add(pool)
        conn = await pool.acquire()
        try:
            await conn.exchange(method, target, headers, body)
        except BaseException:
            pool.release(conn, False)
            raise
        return _Response(conn)

    async def close_upstream(self, upstream: Upstream) -> None:
        pool, upstream.handle = upstream.handle, None
        if pool is not None:
            pool.close()
            self._pools.discard(pool)

    async def aclose(self) -> None:
        for pool in self._pools:
            pool.close()
        self._pools.clear()
