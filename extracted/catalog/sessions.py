"""Who is calling: the monolith owns logins, so writes validate the `sessionid` cookie by asking
its `/accounts/api/whoami`, with a short cache so a burst of writes costs one call."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from extracted.catalog.exceptions import SessionCheckUnavailable

SESSION_COOKIE = "sessionid"


@dataclass(frozen=True, kw_only=True)
class Identity:
    """The user behind a session, as the monolith reports it."""

    id: int
    username: str
    is_staff: bool


class SessionValidator(Protocol):
    """Resolves a session key to its user (None: no such session)."""

    async def identity(self, session_key: str) -> Identity | None: ...

    async def aclose(self) -> None: ...


class MonolithSessions:
    """`SessionValidator` asking the monolith, caching answers (also "no session") for `ttl` seconds.

    A logout therefore takes up to `ttl` seconds to reach this service: the price of not calling
    the monolith on every write.
    """

    def __init__(
        self,
        monolith_url: str,
        *,
        ttl: float = 5.0,
        max_entries: int = 10_000,
        timeout: float = 2.0,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.whoami_url = monolith_url.rstrip("/") + "/accounts/api/whoami"
        self._ttl = ttl
        self._max_entries = max_entries
        self._timeout = timeout
        self._client = client
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, Identity | None]] = OrderedDict()
        self._asking: dict[str, asyncio.Future[Identity | None]] = {}

    async def identity(self, session_key: str) -> Identity | None:
        """The cached answer, else the monolith's: concurrent misses of one key share one call (a
        burst of writes released at once, or arriving as the entry expires, asks once)."""
        now = self._clock()
        cached = self._cache.get(session_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        asking = self._asking.get(session_key)
        if asking is None:
            asking = self._asking[session_key] = asyncio.ensure_future(self._ask(session_key))
            asking.add_done_callback(lambda done: self._answered(session_key, done, now))
        # shield: one caller cancelled (its client went away) does not cancel the others' call.
        return await asyncio.shield(asking)

    def _answered(self, session_key: str, done: asyncio.Future[Identity | None], asked_at: float) -> None:
        if self._asking.get(session_key) is done:
            del self._asking[session_key]
        if done.cancelled() or done.exception() is not None:
            return
        self._cache[session_key] = (asked_at + self._ttl, done.result())
        self._cache.move_to_end(session_key)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)

    async def _ask(self, session_key: str) -> Identity | None:
        if self._client is None:
            # Idle connections are dropped before the monolith's keep-alive timeout (uvicorn's is 5 s):
            # the session cache's TTL is 5 s too, so a check would often go out on a connection the
            # monolith is closing at that moment.
            self._client = httpx.AsyncClient(timeout=self._timeout, limits=httpx.Limits(keepalive_expiry=2.0))
        headers = {"Cookie": f"{SESSION_COOKIE}={session_key}"}
        try:
            try:
                response = await self._client.get(self.whoami_url, headers=headers)
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
                # A pooled connection closed by the monolith as the request went out: the GET is
                # idempotent, ask once more on a fresh connection.
                response = await self._client.get(self.whoami_url, headers=headers)
        except httpx.HTTPError as exc:
            raise SessionCheckUnavailable(
                f"cannot validate the session: the monolith at {self.whoami_url} did not answer ({exc!r})"
            ) from exc
        if response.status_code in (401, 403):
            return None
        try:
            response.raise_for_status()
            body = response.json()
            return Identity(id=int(body["id"]), username=str(body["username"]), is_staff=bool(body["is_staff"]))
        except (httpx.HTTPStatusError, ValueError, KeyError, TypeError) as exc:
            raise SessionCheckUnavailable(
                f"cannot validate the session: {self.whoami_url} answered {response.status_code} "
                f"{response.text[:200]!r}"
            ) from exc

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
