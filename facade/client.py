"""The upstream HTTP client: one small interface, an aiohttp implementation by default.

aiohttp was chosen by measurement (see DESIGN.md and bench/proxy.py): under concurrency plain
httpx falls far behind. Each upstream gets its own `ClientSession` with a bounded keep-alive pool,
no cookie jar, no automatic decompression, no redirect following and no automatically added
headers, and the request target is handed over pre-encoded so the path and query reach the
upstream byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import yarl
from multidict import CIMultiDict

from facade.config import UpstreamConfig
from facade.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout

__all__ = ["AiohttpClient", "Body", "Upstream", "UpstreamClient", "UpstreamResponse"]

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

    async def request(self, upstream: Upstream, method: str, target: str, headers: Headers, body: Body) -> UpstreamResponse:
        """Send `method target` (raw path and query) with these headers (Host excluded) and body."""
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

    async def request(self, upstream: Upstream, method: str, target: str, headers: Headers, body: Body) -> UpstreamResponse:
        handle = upstream.handle
        if handle is None:
            session, base = self._session(upstream), upstream.config.url
        else:
            session, base = handle
        url = yarl.URL(base + target, encoded=True)
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
