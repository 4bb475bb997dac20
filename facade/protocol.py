"""The façade's HTTP/1.1 server protocol: uvicorn's httptools protocol with request-head limits.

Headers reach the façade here, before any ASGI scope exists, so this is where a head that is too
large can be refused without holding it: llhttp (through httptools) sets no limit of its own and
would buffer a 20 MB header line whole. Limits come from `routing.yaml`'s `limits:` (as nginx's
`large_client_header_buffers 4 8k`: 8 KB a line, 32 KB for the whole head) and follow reloads:

- a request line longer than `header_line` gets 414, a header line longer than it or a whole head
  longer than `headers` gets 431; a head still incomplete past `headers` is refused as it arrives,
  so at most `headers` plus one read of the socket is ever held;
- an HTTP/0.9 request line (`GET /`, no version) gets 400;
- a request llhttp cannot parse gets 400.

Each answer is the façade's JSON error, counted in the metrics and the access log like any other
request (`Proxy.refusal`), and the connection is closed. The usual request pays a few attribute
updates and one comparison (`bench/head_limits.py`: about 3% of this layer's own cost): the exact
per-line accounting runs only when the bytes read since the head began exceed the line limit,
since below it no line and no head can be over either limit.
"""

from __future__ import annotations

import asyncio
import http
import json
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from facade.proxy import Proxy

__all__ = ["FacadeHttpProtocol"]

_DEFAULT_LIMITS = (8192, 32768)
_SHOWN = 64  # bytes of an oversized target or header name quoted in the error


class _Refused(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def _proxy_of(app: Any) -> Proxy | None:
    """The façade's proxy core behind uvicorn's loaded app (possibly wrapped in middleware)."""
    for _ in range(8):
        proxy = getattr(app, "proxy", None)
        if isinstance(proxy, Proxy):
            return proxy
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class FacadeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that refuses oversized heads and HTTP/0.9 as they arrive."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.proxy = _proxy_of(self.app)
        self.line_limit, self.head_limit = _DEFAULT_LIMITS
        self.head_open = False  # between the first byte of a request and its last header
        self.head_began = False  # a request began in the chunk being parsed
        self.head_read = 0  # at most this many bytes of the open head were read in earlier chunks
        self.head_after = 0  # bytes read in the chunks after the one the open head began in
        self.chunk = 0

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self.head_began = False
        self.chunk = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if not isinstance(refused, _Refused):
                refused = _Refused(400, "bad_request", f"the request is not valid HTTP/1.1 ({exc}); check the request line and headers")
            self._refuse(refused)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.head_open:
            # The head goes on past this chunk. The chunk it began in may also hold the end of
            # the previous request, so only the chunks after it are held against the limit.
            self.head_read += len(data)
            if self.head_began:
                self.head_after = 0
            else:
                self.head_after += len(data)
                if self.head_after > self.head_limit:
                    if not self.headers:
                        self._refuse(self._too_long_target(self.head_read))
                    else:
                        self._refuse(_Refused(431, "header_too_large", self._head_detail(self.head_read, "and not complete")))

    # The base class is named, not super(): these two run once per request.
    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self.head_open = True
        self.head_began = True
        self.head_read = self.head_after = 0
        if self.proxy is not None:
            self.line_limit, self.head_limit = self.proxy.generation.head_limits

    def on_headers_complete(self) -> None:
        self.head_open = False
        if self.head_read + self.chunk > self.line_limit:
            self._check_head()
        if not self.headers and self.parser.get_http_version() == "0.9":
            raise _Refused(
                400, "bad_request",
                "the request line has no HTTP version (an HTTP/0.9 request), which the façade does not serve; "
                "send it as HTTP/1.1, e.g. 'GET / HTTP/1.1'",
            )
        HttpToolsProtocol.on_headers_complete(self)

    def _check_head(self) -> None:
        """The exact accounting, for heads that may be over a limit."""
        line = self.line_limit
        if len(self.url) > line:
            raise self._too_long_target(len(self.url))
        total = len(self.url) + 16  # method, version, separators
        for name, value in self.headers:
            size = len(name) + len(value) + 4  # ": " and CRLF
            if size > line:
                raise _Refused(
                    431, "header_too_large",
                    f"the request header {name[:_SHOWN].decode('latin-1')!r} is {size} bytes, over the limit of {line} bytes "
                    "a line (limits.header_line in routing.yaml); send a smaller header or raise the limit",
                )
            total += size
        if total > self.head_limit:
            raise _Refused(431, "header_too_large", self._head_detail(total, "in all"))

    def _too_long_target(self, size: int) -> _Refused:
        return _Refused(
            414, "uri_too_long",
            f"the request target is {size} bytes, over the limit of {self.line_limit} bytes a line "
            "(limits.header_line in routing.yaml); send a shorter URL or raise the limit",
        )

    def _head_detail(self, size: int, how: str) -> str:
        return (
            f"the request headers are {size} bytes {how}, over the limit of {self.head_limit} bytes "
            "(limits.headers in routing.yaml); send fewer or smaller headers or raise the limit"
        )

    def _refuse(self, refused: _Refused) -> None:
        self.head_open = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        target: bytes = getattr(self, "url", b"")[:_SHOWN]
        # llhttp reads the method before the target; without a target it may not have one.
        method = self.parser.get_method().decode("latin-1") if target else ""
        if self.proxy is not None:
            headers, body = self.proxy.refusal(refused.status, refused.reason, refused.detail, method=method, target=target, client=self.client)
        else:
            body = json.dumps({"error": refused.reason, "detail": refused.detail, "request_id": ""}).encode("utf-8")
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("ascii"))]
        phrase = http.HTTPStatus(refused.status).phrase.encode("ascii")
        parts = [b"HTTP/1.1 %d %s\r\n" % (refused.status, phrase)]
        parts += [name + b": " + value + b"\r\n" for name, value in headers]
        parts.append(b"connection: close\r\n\r\n")
        parts.append(body)
        transport.write(b"".join(parts))
        transport.close()
