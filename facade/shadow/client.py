"""The shadow client: sends one mirrored request to a candidate (the shadow's network boundary)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from typing import Protocol

from facade.client import H1Client, Upstream
from facade.config import UpstreamConfig
from facade.errors import UpstreamError, UpstreamTimeout
from facade.shadow.compare import Reply
from facade.shadow.exceptions import ShadowSendError
from facade.shadow.jobs import header_map
from facade.shadow.redact import scrub_urls

__all__ = ["H1ShadowClient", "ShadowClient", "decoded"]


class ShadowClient(Protocol):
    """Sends one mirrored request; the only network boundary of the shadow addon."""

    async def send(self, method: str, url: str, headers: Sequence[tuple[bytes, bytes]], body: bytes, *, timeout: float, cap: int) -> Reply:
        """The answer, its body cut at `cap` bytes (`Reply.truncated`); raises TimeoutError on timeout."""
        ...

    async def close(self) -> None: ...


class H1ShadowClient:
    """`ShadowClient` over the façade's own HTTP/1.1 client (`facade.client.H1Client`).

    Its pools are its own, one per scheme and host, so shadow traffic never shares the primary's
    connections. The request keeps the client's Host (the mirrored headers carry it), the
    response is read up to `cap` bytes (a truncated connection is closed, not reused), and the
    whole exchange is bounded by `timeout`. Per request it costs well under half of aiohttp's
    client, which is most of what a shadow worker spends.
    """

    def __init__(self, *, limit: int = 200) -> None:
        self._limit = limit
        self._client = H1Client()
        self._upstreams: dict[tuple[str, float], Upstream] = {}

    def _upstream(self, base: str, timeout: float) -> Upstream:
        upstream = self._upstreams.get((base, timeout))
        if upstream is None:
            config = UpstreamConfig(name=base, url=base, connect_timeout=min(timeout, 5.0), timeout=timeout, pool=self._limit)
            upstream = self._upstreams[(base, timeout)] = Upstream(base, config, host_header=False)
        return upstream

    async def send(self, method: str, url: str, headers: Sequence[tuple[bytes, bytes]], body: bytes, *, timeout: float, cap: int) -> Reply:
        scheme, _, rest = url.partition("://")
        netloc, slash, path = rest.partition("/")
        target = (slash + path or "/").encode("latin-1")
        pairs = list(headers)
        if not any(k == b"host" for k, _ in pairs):
            pairs.insert(0, (b"host", netloc.encode("idna")))
        try:
            async with asyncio.timeout(timeout):
                response = await self._client.request(self._upstream(f"{scheme}://{netloc}", timeout), method, target, pairs, body or None)
                chunks: list[bytes] = []
                size = 0
                truncated = False
                try:
                    while chunk := await response.read():
                        if size + len(chunk) > cap:
                            chunks.append(chunk[: cap - size])
                            truncated = True
                            break
                        chunks.append(chunk)
                        size += len(chunk)
                finally:
                    response.close(reuse=not truncated)
        except UpstreamTimeout as exc:
            raise TimeoutError(str(exc)) from exc
        except UpstreamError as exc:
            raise ShadowSendError(scrub_urls(f"{method} {url}: {exc}")) from exc
        head = header_map([(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers])
        return Reply(response.status, head, b"".join(chunks), truncated)

    async def close(self) -> None:
        await self._client.aclose()



def decoded(reply: Reply) -> Reply:
    """The reply with a gzip/deflate body decoded, so both sides compare on content."""
    encoding = reply.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("gzip", "deflate") or reply.truncated:
        return reply
    try:
        body = zlib.decompress(reply.body, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    except zlib.error:
        return reply
    headers = {k: v for k, v in reply.headers.items() if k != "content-encoding"}
    return Reply(reply.status, headers, body, False)
