"""The reverse proxy core: a plain ASGI callable that forwards a request to its upstream.

Per request: match the route on the table in force when the request arrived, pick the upstream
(override header, sticky key or assignment cookie, weights), check its breaker, then stream the
request body up and the response body down chunk by chunk. Headers stay lists of byte pairs.

Forwarding rules, as nginx applies them:
- hop-by-hop headers (Connection, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade and
  every header named in Connection) are dropped both ways; `Expect` is answered here, not forwarded;
- `Host` becomes the upstream's (nginx's `proxy_set_header Host $proxy_host` default); the
  client's Host goes to `X-Forwarded-Host`, its scheme to `X-Forwarded-Proto`, its address is
  appended to `X-Forwarded-For`;
- the raw path and query string go up byte for byte; repeated headers (`Set-Cookie`) come down
  as they are; redirects are not followed; HEAD, 204 and 304 responses carry no body;
- `X-Request-ID` and W3C `traceparent` are passed on, created when absent (or malformed), and the
  request id is returned to the client.

Resilience: the route's timeout bounds everything up to the response head, retries and fallback
included; the upstream's `timeout` bounds each attempt's wait for the response head and each wait
for body data after it (as nginx's proxy_read_timeout does), so a hung upstream costs one attempt
and not the route's whole budget.
A request is retried, whatever its method, when it provably never reached the upstream (no
connection); otherwise only idempotent methods are, and only while the request body read so far
fits the route's replay buffer. Nothing is retried once the response has started. Breakers are
per upstream; a route's `fallback` takes safe requests when the chosen upstream's breaker is open
or it fails: no connection or a broken exchange once its retries are used up, or a 502, 503 or
504 answer (as nginx's `proxy_next_upstream error http_502 http_503 http_504`; a 500 is the
application's answer and goes to the client, and the route's timeout, one budget for all of it,
ends the request with a 504). Writes are never moved to another upstream. Errors the façade
answers itself are JSON: `{"error", "detail", "request_id"}`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from facade.addons import AddonManager, Flow
from facade.breaker import Breaker, Breakers
from facade.client import Body, Upstream, UpstreamClient, UpstreamResponse
from facade.errors import ClientGone, UpstreamError, UpstreamTimeout
from facade.hold import Holds, HoldTimeout
from facade.routing import Route, RouteTable, override, path_problem, sticky_key

__all__ = ["Deadlines", "Generation", "Proxy", "HOP_BY_HOP", "IDEMPOTENT_METHODS", "SAFE_METHODS", "request_id_for"]

log = logging.getLogger("strangler.facade")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers the façade sets itself (or answers itself, like Expect), and the façade's own
# markers a client must not send upstream: the mirror marker and the override secret.
_REPLACED = frozenset({b"host", b"x-forwarded-proto", b"x-forwarded-host", b"expect", b"x-strangler-shadow", b"x-strangler-token"})
OVERRIDE_TOKEN_HEADER = "x-strangler-token"
_OVERRIDE_TOKEN = OVERRIDE_TOKEN_HEADER.encode("ascii")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_NO_BODY_STATUS = frozenset({204, 304})
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,200}")
_TRACEPARENT = re.compile(rb"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-[\x21-\x7e]*)?")
_COOKIE_VALUE = re.compile(r"[0-9A-Za-z_-]{8,64}")
# Ids for correlation and sticky assignment, not secrets: the fast generator is enough.
_bits = random.getrandbits


def request_id_for(given: bytes | None) -> tuple[bytes, bool]:
    """The client's `X-Request-ID` when well-formed, else a new one: (id, whether it is new)."""
    if given is None or not _REQUEST_ID.fullmatch(given):
        return b"%032x" % _bits(128), True
    return given, False


@dataclass(frozen=True, slots=True, eq=False)
class Generation:
    """The table in force and the upstream objects (connection pools) it uses. Swapped whole."""

    table: RouteTable
    upstreams: Mapping[str, Upstream]
    cookie: str
    cookie_suffix: bytes
    override_header: str | None
    head_limits: tuple[int, int] = (8192, 32768)
    """(longest request or header line, whole request head) in bytes, for the HTTP protocol."""


class _Cookies(Mapping[str, str]):
    """The request's cookies, parsed on first access (most requests never look)."""

    __slots__ = ("_header", "_parsed")

    def __init__(self, header: str | None) -> None:
        self._header = header
        self._parsed: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        parsed = self._parsed
        if parsed is None:
            parsed = self._parsed = {}
            if self._header:
                for part in self._header.split(";"):
                    name, sep, value = part.partition("=")
                    if sep:
                        name = name.strip()
                        if name and name not in parsed:
                            parsed[name] = value.strip().strip('"')
        return parsed

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._dict().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())


class _Query(Mapping[str, list[str]]):
    """The query string as key → all values, parsed on first access."""

    __slots__ = ("_raw", "_parsed")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._parsed: dict[str, list[str]] | None = None

    def _dict(self) -> dict[str, list[str]]:
        parsed = self._parsed
        if parsed is None:
            from urllib.parse import parse_qsl

            parsed = self._parsed = {}
            for key, value in parse_qsl(self._raw.decode("latin-1"), keep_blank_values=True):
                parsed.setdefault(key, []).append(value)
        return parsed

    def __getitem__(self, key: str) -> list[str]:
        return self._dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._dict().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())


class _RequestBody:
    """The client's request body, streamed to the upstream, kept for replay up to a cap."""

    __slots__ = ("receive", "flow", "addons", "hooks", "cap", "buffered", "size", "keep", "done", "lost", "gone")

    def __init__(self, receive: Receive, first: bytes, cap: int, flow: Flow, addons: AddonManager) -> None:
        self.receive = receive
        self.flow = flow
        self.addons = addons
        self.hooks = addons.request_chunk
        self.cap = cap
        self.buffered = [first] if first else []
        self.size = len(first)
        self.keep = True
        self.done = False
        self.lost = False  # some chunk went up that is no longer held: no replay possible
        self.gone = False

    async def stream(self) -> Any:
        if self.buffered:
            for chunk in list(self.buffered):
                if not self.keep:
                    self.lost = True
                yield chunk
            if not self.keep:
                self.buffered.clear()
        receive = self.receive
        while not self.done:
            message = await receive()
            if message["type"] != "http.request":
                self.gone = True
                raise ClientGone("the client disconnected while sending its request body")
            chunk = message.get("body", b"")
            self.done = not message.get("more_body", False)
            if not chunk:
                continue
            self.size += len(chunk)
            self.flow.bytes_in = self.size
            if self.hooks:
                self.addons.chunk_event(self.hooks, self.flow, chunk, "request_chunk")
            if self.keep:
                if self.size <= self.cap:
                    self.buffered.append(chunk)
                else:
                    self.keep = False
                    self.buffered.clear()
            if not self.keep:
                self.lost = True
            yield chunk


class Deadlines:
    """Request deadlines with one sweeping timer for all of them (checked every `resolution`
    seconds) instead of a timer per request: a task past its deadline is cancelled, and
    `fired(task)` then tells the request that the cancellation was its timeout."""

    __slots__ = ("resolution", "entries", "_fired", "_handle")

    def __init__(self, resolution: float = 0.01) -> None:
        self.resolution = resolution
        self.entries: dict[asyncio.Task[Any], float] = {}
        self._fired: set[asyncio.Task[Any]] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, task: asyncio.Task[Any] | None, deadline: float) -> None:
        if task is None:
            return
        self.entries[task] = deadline
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.resolution, self._sweep)

    def discard(self, task: asyncio.Task[Any] | None) -> None:
        self.entries.pop(task, None)  # type: ignore[arg-type]

    def forget(self, task: asyncio.Task[Any] | None) -> None:
        self._fired.discard(task)  # type: ignore[arg-type]

    def fired(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether `task` was cancelled for its deadline (and take that cancellation back)."""
        if task is None or task not in self._fired:
            return False
        self._fired.discard(task)
        task.uncancel()
        return True

    def _sweep(self) -> None:
        self._handle = None
        now = time.monotonic()
        expired = [task for task, deadline in self.entries.items() if deadline <= now]
        for task in expired:
            del self.entries[task]
            self._fired.add(task)
            task.cancel()
        if self.entries:
            self._handle = asyncio.get_running_loop().call_later(self.resolution, self._sweep)


class _Failure(Exception):
    """A response the façade gives itself: status, reason code and a sentence."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


class Proxy:
    """The forwarding ASGI callable (HTTP only; the app routes `/_strangler/` elsewhere).

    `swap(table)` installs a new route table for requests that start afterwards; requests in
    flight finish on the table they started with. Upstreams whose config did not change keep
    their connection pools; pools of removed or changed upstreams close once idle.
    """

    def __init__(
        self,
        table: RouteTable,
        *,
        client: UpstreamClient,
        addons: AddonManager,
        breakers: Breakers | None = None,
        override_secrets: Collection[str] | None = None,
        holds: Holds | None = None,
    ) -> None:
        self.client = client
        # None: the override header needs no secret (the façade listens on loopback only);
        # otherwise the request must carry one of these in X-Strangler-Token.
        self.override_secrets = tuple(secret.encode("utf-8") for secret in override_secrets) if override_secrets is not None else None
        self.addons = addons
        self.breakers = breakers or Breakers(table.config.breaker)
        self.generation: Generation = self._generation(table, {})
        self.breakers.configure(table.config.breaker, frozenset(table.upstreams))
        self._closing: set[asyncio.Task[None]] = set()
        self.deadlines = Deadlines()
        self.inflight = 0
        self.holds = holds or Holds()
        self.holds.configure(table)

    # -- configuration -------------------------------------------------------------------------

    @staticmethod
    def _generation(table: RouteTable, previous: Mapping[str, Upstream]) -> Generation:
        upstreams: dict[str, Upstream] = {}
        for name, config in table.upstreams.items():
            old = previous.get(name)
            upstreams[name] = old if old is not None and old.config == config else Upstream(name, config)
        assignment = table.config.assignment
        suffix = f"; Path=/; Max-Age={int(assignment.cookie_max_age)}; HttpOnly; SameSite=Lax".encode("latin-1")
        limits = table.config.limits
        return Generation(table, upstreams, assignment.cookie, suffix, assignment.override_header, (limits.header_line, limits.headers))

    def swap(self, table: RouteTable) -> None:
        """Install `table` for new requests (one reference assignment)."""
        old = self.generation
        new = self._generation(table, old.upstreams)
        self.breakers.configure(table.config.breaker, frozenset(table.upstreams))
        self.generation = new
        self.holds.configure(table)  # after the swap: what it releases goes where `table` says
        for name, upstream in old.upstreams.items():
            if new.upstreams.get(name) is not upstream:
                upstream.retired = True
                if upstream.inflight == 0:
                    self._close_upstream(upstream)

    def _close_upstream(self, upstream: Upstream) -> None:
        task = asyncio.get_running_loop().create_task(self.client.close_upstream(upstream))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Wait for pools being closed, then close the client."""
        while self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
        await self.client.aclose()

    def _may_override(self, headers: Mapping[str, str]) -> bool:
        given = headers.get(OVERRIDE_TOKEN_HEADER)
        if not given or self.override_secrets is None:
            return False
        token = given.strip().encode("latin-1")
        return any(hmac.compare_digest(token, secret) for secret in self.override_secrets)

    # -- the request path ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        generation = self.generation
        table = generation.table
        started = time.monotonic()
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        query_string: bytes = scope.get("query_string", b"")
        request_headers: Headers = scope["headers"]

        # One pass over the request headers: text views for matching, the values we act on.
        text: dict[str, str] = {}
        request_id = traceparent = host = forwarded_for = None
        connection: bytes | None = None
        for header, value in request_headers:
            if header == b"x-request-id":
                request_id = value
            elif header == b"traceparent":
                traceparent = value
            elif header == b"host":
                host = value
            elif header == b"x-forwarded-for":
                forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
            elif header == b"connection":
                connection = value if connection is None else connection + b"," + value
            label = header.decode("latin-1")
            previous = text.get(label)
            decoded = value.decode("latin-1")
            text[label] = decoded if previous is None else previous + ("; " if label == "cookie" else ", ") + decoded

        if OVERRIDE_TOKEN_HEADER in text:
            # The override secret is for the façade alone: no addon (shadow, recorder) sees it.
            request_headers = [item for item in request_headers if item[0] != _OVERRIDE_TOKEN]
        request_id, new_request_id = request_id_for(request_id)
        request_id_text = request_id.decode("ascii")

        path: str = scope["path"]
        cookies = _Cookies(text.get("cookie"))
        client = scope.get("client")
        problem = "the request target must be an absolute path starting with '/'" if not raw_path.startswith(b"/") else path_problem(raw_path, path)
        if problem is not None:
            flow = Flow(request_id_text, table.default, table, "", method, raw_path, query_string, request_headers, client, started)
            await self._fail(flow, send, _Failure(400, "bad_request", problem), None)
            self._finished(flow)
            return
        route = table.match(method, path, text, cookies, _Query(query_string))
        holds = self.holds
        if holds.active and route.id in holds.active:
            # The write hold: wait with the body unread, then go where the table in force says.
            try:
                route = await holds.wait(route, lambda: self.generation.table.match(method, path, text, cookies, _Query(query_string)))
            except HoldTimeout as exc:
                flow = Flow(request_id_text, route, table, "", method, raw_path, query_string, request_headers, client, started)
                await self._fail(flow, send, _Failure(503, "held_too_long", str(exc)), None)
                self._finished(flow)
                return
            generation = self.generation
            table = generation.table
            started = time.monotonic()  # the route's timeout starts at release (the wait has its own metric)

        # Upstream choice: override header, else sticky key / assignment cookie and weights.
        set_cookie: bytes | None = None
        key = sticky_key(route, text, cookies, client[0] if client else None) if route.config.sticky else None
        forced = override(table, route, text) if generation.override_header else None
        if forced is not None and self.override_secrets is not None and not self._may_override(text):
            forced = None
        if forced is not None:
            name = forced
        else:
            if key is None and len(route.upstreams) > 1:
                key = cookies.get(generation.cookie)
                if key is None or not _COOKIE_VALUE.fullmatch(key):
                    key = "%032x" % _bits(128)
                    set_cookie = generation.cookie.encode("latin-1") + b"=" + key.encode("ascii") + generation.cookie_suffix
            name = route.choose(key)

        flow = Flow(request_id_text, route, table, name, method, raw_path, query_string, request_headers, client, started, key)
        addons = self.addons
        if addons.request_started:
            addons.flow_event(addons.request_started, flow, "request_started")
        self.inflight += 1
        token = holds.enter(route.id, started)
        try:
            await self._forward(
                flow, generation, route, name, forced is not None, scope, receive, send,
                request_id, new_request_id, traceparent, host, forwarded_for, connection, set_cookie,
            )
        finally:
            self.inflight -= 1
            holds.leave(route.id, token)
            self._finished(flow)

    def _finished(self, flow: Flow) -> None:
        flow.duration = time.monotonic() - flow.started
        addons = self.addons
        if addons.request_finished:
            addons.flow_event(addons.request_finished, flow, "request_finished")

    async def _forward(
        self,
        flow: Flow,
        generation: Generation,
        route: Route,
        name: str,
        forced: bool,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: bytes,
        new_request_id: bool,
        traceparent: bytes | None,
        host: bytes | None,
        forwarded_for: bytes | None,
        connection: bytes | None,
        set_cookie: bytes | None,
    ) -> None:
        method = flow.method
        request_headers = flow.request_headers
        # Headers for the upstream.
        dropped = HOP_BY_HOP
        if connection is not None:
            dropped = HOP_BY_HOP | {token.strip().lower() for token in connection.split(b",")}
        headers: Headers = []
        for item in request_headers:
            header = item[0]
            if header in dropped or header in _REPLACED or header == b"x-forwarded-for":
                continue
            headers.append(item)
        client = flow.client
        if client is not None:
            address = client[0].encode("latin-1")
            headers.append((b"x-forwarded-for", forwarded_for + b", " + address if forwarded_for else address))
        elif forwarded_for:
            headers.append((b"x-forwarded-for", forwarded_for))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("latin-1")))
        if host is not None:
            headers.append((b"x-forwarded-host", host))
        if new_request_id:
            headers = [item for item in headers if item[0] != b"x-request-id"]
            headers.append((b"x-request-id", request_id))
        if traceparent is None or not _TRACEPARENT.fullmatch(traceparent):
            if traceparent is not None:
                headers = [item for item in headers if item[0] != b"traceparent"]
            headers.append((b"traceparent", b"00-%032x-%016x-01" % (_bits(128) or 1, _bits(64) or 1)))

        # The first body message tells whether there is a body at all (no await for GETs).
        message = await receive()
        if message["type"] != "http.request":
            flow.error = "client_closed"
            return
        first: bytes = message.get("body", b"")
        config = route.config
        replay_cap = config.retries.replay_buffer
        body_source: _RequestBody | None = None
        whole: bytes | None = None
        if message.get("more_body", False):
            body_source = _RequestBody(receive, first, replay_cap, flow, self.addons)
            if first and self.addons.request_chunk:
                self.addons.chunk_event(self.addons.request_chunk, flow, first, "request_chunk")
            flow.bytes_in = len(first)
        else:
            flow.bytes_in = len(first)
            if first:
                whole = first
                if self.addons.request_chunk:
                    self.addons.chunk_event(self.addons.request_chunk, flow, first, "request_chunk")
            elif method not in SAFE_METHODS:
                whole = b""

        target = flow.raw_path + b"?" + flow.query_string if flow.query_string else flow.raw_path
        upstreams = generation.upstreams
        upstream = upstreams[name]
        fallback_name = config.fallback
        fallback = upstreams.get(fallback_name) if fallback_name and method in SAFE_METHODS and not forced else None
        if fallback is upstream:
            fallback = None
        timeout = config.timeout or upstream.config.timeout
        deadline = flow.started + timeout
        attempts_allowed = config.retries.attempts
        breakers = self.breakers
        deadlines = self.deadlines

        response: UpstreamResponse | None = None
        failure: _Failure | None = None
        used: list[Upstream] = []
        try:
            breaker: Breaker | None = breakers.get(name)
            assert breaker is not None
            if not breaker.allow():
                if fallback is None:
                    raise _Failure(503, "circuit_open", f"upstream {name!r} is failing and its circuit breaker is open; retry later")
                upstream, breaker = fallback, breakers.get(fallback.name)
                fallback = None
                flow.upstream = upstream.name
            tries = 0
            while True:
                tries += 1
                flow.attempts += 1
                if upstream not in used:
                    upstream.inflight += 1
                    used.append(upstream)
                body: Body = body_source.stream() if body_source is not None else whole
                sent_at = time.monotonic()
                # The upstream's timeout bounds this attempt's wait for the response head, so a
                # hung upstream leaves the rest of the route's budget to a retry or the fallback.
                attempt_deadline = min(deadline, sent_at + upstream.config.timeout)
                task = asyncio.current_task()
                deadlines.add(task, attempt_deadline)
                error: UpstreamError | None = None
                try:
                    try:
                        response = await self.client.request(upstream, method, target, headers, body)
                    finally:
                        deadlines.discard(task)
                except asyncio.CancelledError:
                    if not deadlines.fired(task):
                        raise
                    if attempt_deadline >= deadline:
                        breaker.failure()
                        raise _Failure(504, "upstream_timeout", f"upstream {upstream.name!r} did not answer within the route's {timeout:g}s") from None
                    error = UpstreamTimeout(
                        f"upstream {upstream.name!r} sent no response head within its timeout of {upstream.config.timeout:g}s"
                    )
                except UpstreamError as exc:
                    error = exc
                except ClientGone:
                    breaker.release()
                    raise
                if error is not None:
                    if body_source is not None and body_source.gone:
                        breaker.release()
                        raise ClientGone(str(error)) from error
                    breaker.failure()
                    can_replay = not body_source.lost if body_source is not None else whole is None or len(whole) <= replay_cap
                    if tries < attempts_allowed and can_replay and (not error.reached or method in IDEMPOTENT_METHODS) and breaker.allow():
                        log.info("request %s: retrying %s %s on %r after: %s", flow.request_id, method, flow.path, upstream.name, error)
                        continue
                    if fallback is not None and can_replay:
                        log.info("request %s: falling back to %r after: %s", flow.request_id, fallback.name, error)
                        upstream, breaker = fallback, breakers.get(fallback.name)
                        fallback = None
                        flow.upstream = upstream.name
                        breaker.allow()
                        continue
                    status = 504 if error.reason == "upstream_timeout" else 502
                    raise _Failure(status, error.reason, str(error)) from error
                assert response is not None
                status = response.status
                if status >= 502 and status <= 504:
                    breaker.failure()
                    if fallback is not None and (body_source is None or not body_source.lost):
                        log.info("request %s: falling back to %r after status %d from %r", flow.request_id, fallback.name, status, upstream.name)
                        response.close(reuse=False)
                        response = None
                        upstream, breaker = fallback, breakers.get(fallback.name)
                        fallback = None
                        flow.upstream = upstream.name
                        breaker.allow()
                        continue
                else:
                    breaker.success()
                flow.upstream_duration = time.monotonic() - sent_at
                break
            await self._respond(flow, response, send, receive, request_id if new_request_id else None, set_cookie, body_source)
        except _Failure as exc:
            failure = exc
        except ClientGone:
            flow.error = "client_closed"
        finally:
            if deadlines._fired:
                deadlines.forget(asyncio.current_task())
            if response is not None and flow.error is not None:
                response.close(reuse=False)
            for used_upstream in used:
                used_upstream.inflight -= 1
                if used_upstream.retired and used_upstream.inflight == 0:
                    self._close_upstream(used_upstream)
        if failure is not None:
            await self._fail(flow, send, failure, set_cookie)

    async def _respond(
        self,
        flow: Flow,
        response: UpstreamResponse,
        send: Send,
        receive: Receive,
        new_request_id: bytes | None,
        set_cookie: bytes | None,
        body_source: _RequestBody | None,
    ) -> None:
        status = response.status
        upstream_headers = response.headers
        connection: set[bytes] | None = None
        for header, value in upstream_headers:
            if header.lower() == b"connection":
                connection = connection or set()
                connection.update(token.strip().lower() for token in value.split(b","))
        no_body = flow.method == "HEAD" or status in _NO_BODY_STATUS or status < 200
        headers: Headers = []
        length: int | None = None
        has_request_id = False
        for header, value in upstream_headers:
            lower = header.lower()
            if lower in HOP_BY_HOP or (connection is not None and lower in connection):
                continue
            if lower == b"content-length":
                if status in _NO_BODY_STATUS or status < 200:
                    # The server would insist on sending that many bytes.
                    continue
                if not no_body:
                    try:
                        length = int(value)
                    except ValueError:
                        response.close(reuse=False)
                        raise _Failure(502, "upstream_error", f"the upstream sent an invalid Content-Length {value!r}") from None
            elif lower == b"x-request-id":
                has_request_id = True
            headers.append((lower, value))
        if new_request_id is not None and not has_request_id:
            headers.append((b"x-request-id", new_request_id))
        elif not has_request_id:
            headers.append((b"x-request-id", flow.request_id.encode("ascii")))
        if set_cookie is not None:
            headers.append((b"set-cookie", set_cookie))
        flow.status = status
        flow.response_headers = headers
        addons = self.addons
        if addons.response_started:
            addons.flow_event(addons.response_started, flow, "response_started")

        await send({"type": "http.response.start", "status": status, "headers": headers})
        if no_body:
            response.close(reuse=True)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        hooks = addons.response_chunk
        sent = 0
        watcher: _DisconnectWatcher | None = None
        if length is None and (body_source is None or body_source.done):
            # An open-ended stream (SSE): stop reading the upstream when the client goes away.
            watcher = _DisconnectWatcher(receive)
        try:
            read = response.read
            while True:
                chunk = await read()
                if not chunk:
                    break
                sent += len(chunk)
                if hooks:
                    addons.chunk_event(hooks, flow, chunk, "response_chunk")
                if length is not None and sent >= length:
                    break  # the last piece goes out with the end of the response
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if watcher is not None:
                await watcher.close()
            flow.bytes_out = sent
            if length is not None and sent != length:
                raise UpstreamError(f"the upstream sent {sent} bytes of the {length} it announced")
            response.close(reuse=True)
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
        except UpstreamError as exc:
            # The head is out: the only honest thing left is to abort the client's connection.
            flow.bytes_out = sent
            flow.error = "upstream_aborted"
            response.close(reuse=False)
            log.warning(
                "request %s: upstream %r broke off the response after %d bytes (%s); aborting the client connection",
                flow.request_id, flow.upstream, sent, exc,
            )
        except asyncio.CancelledError:
            if watcher is None or not watcher.fired:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            flow.bytes_out = sent
            flow.error = "client_closed"
            response.close(reuse=False)
        finally:
            if watcher is not None:
                await watcher.close()

    async def _fail(self, flow: Flow, send: Send, failure: _Failure, set_cookie: bytes | None) -> None:
        headers, body = self._error(flow, failure, set_cookie)
        await send({"type": "http.response.start", "status": failure.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if flow.method == "HEAD" else body, "more_body": False})

    @staticmethod
    def _error(flow: Flow, failure: _Failure, set_cookie: bytes | None) -> tuple[Headers, bytes]:
        """The façade's own JSON error for `flow`: response headers and body (noted on the flow)."""
        flow.error = failure.reason
        flow.status = failure.status
        log.warning("request %s: %s %s → %d %s: %s", flow.request_id, flow.method, flow.path, failure.status, failure.reason, failure.detail)
        body = json.dumps({"error": failure.reason, "detail": failure.detail, "request_id": flow.request_id}).encode("utf-8")
        headers: Headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"x-request-id", flow.request_id.encode("ascii")),
            (b"cache-control", b"no-store"),
        ]
        if set_cookie is not None:
            headers.append((b"set-cookie", set_cookie))
        if failure.status == 503:
            headers.append((b"retry-after", b"1"))
        flow.response_headers = headers
        flow.bytes_out = len(body)
        return headers, body

    def refusal(self, status: int, reason: str, detail: str, *, method: str, target: bytes, client: tuple[str, int] | None) -> tuple[Headers, bytes]:
        """The façade's JSON error for a request the HTTP layer refuses before its head is complete
        (too large, HTTP/0.9), recorded like any request (metrics, access log): headers and body."""
        table = self.generation.table
        flow = Flow("%032x" % _bits(128), table.default, table, "", method, target, b"", [], client, time.monotonic())
        headers, body = self._error(flow, _Failure(status, reason, detail), None)
        self._finished(flow)
        return headers, body


class _DisconnectWatcher:
    """Cancels the task streaming a response when its client disconnects (`fired` tells why)."""

    __slots__ = ("fired", "_task", "_watch")

    def __init__(self, receive: Receive) -> None:
        self.fired = False
        self._task = asyncio.current_task()
        self._watch: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(self._run(receive))

    async def _run(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.fired = True
                if self._task is not None:
                    self._task.cancel()
                return

    async def close(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None and not watch.done():
            watch.cancel()
            await asyncio.wait([watch])
