"""Addons: features that hang off the proxy core (metrics, access log, shadowing, ...).

An addon is any object with some of these hooks, all optional:

- `async start()` / `async stop()`: lifecycle, called from the app's lifespan. An addon that does
  I/O owns its tasks and awaits them in `stop()`.
- `configure(table)` (plain or async): the routing table in force, after `start()` and again after
  every successful reload, so what an addon derives from `routing.yaml` follows the file (as
  mitmproxy's `configure(updated)`). An addon with an `active` attribute that is false after it
  is left out of the request hooks until a later `configure` sets it: costing nothing per request
  while, say, no route is shadowed.
- `request_started(flow)`: the route and upstream are chosen, nothing was sent yet.
- `request_chunk(flow, data)`: a piece of the request body on its way to the upstream.
- `response_started(flow)`: the upstream answered; `flow.status` and `flow.response_headers` are set.
- `response_chunk(flow, data)`: a piece of the response body on its way to the client.
- `request_finished(flow)`: always called once, last, also after errors (`flow.error` set).

Hooks are synchronous and must be cheap: they run on the request path. An addon that raises is
logged and counted (`AddonManager.failures`), the request carries on. The dispatch lists are
computed at start and after each `configure`, so a hook nobody implements (or only an inactive
addon does) costs nothing per request or per chunk.
"""

from __future__ import annotations

import collections
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facade.routing import Route, RouteTable

__all__ = ["AddonManager", "Flow", "HOOKS"]

log = logging.getLogger("strangler.facade")

HOOKS = ("request_started", "request_chunk", "response_started", "response_chunk", "request_finished")

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True, eq=False)
class Flow:
    """One request through the façade, as the addons see it.

    `request_headers` are the client's headers as received (byte pairs, lower-case names);
    `response_headers` the upstream's, as forwarded (after hop-by-hop removal). `upstream` is the
    name of the upstream that served (or was last tried). `error` is None on success, otherwise a
    short reason such as `upstream_timeout`. `duration` (seconds) and `upstream_duration` (time to
    the upstream's response head, seconds) are set when the flow finishes. `state` is for addons.
    """

    request_id: str
    route: Route
    table: RouteTable
    upstream: str
    method: str
    raw_path: bytes
    query_string: bytes
    request_headers: Headers
    client: tuple[str, int] | None
    started: float
    sticky_key: str | None = None
    status: int | None = None
    response_headers: Headers | None = None
    error: str | None = None
    duration: float | None = None
    upstream_duration: float | None = None
    attempts: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        """The raw path as text (percent-encoding kept)."""
        return self.raw_path.decode("latin-1")


class AddonManager:
    """Calls the addons' hooks in order; a failing hook is logged and counted, never raised."""

    def __init__(self, addons: Iterable[object] = ()) -> None:
        self.addons: tuple[object, ...] = tuple(addons)
        self.failures: collections.Counter[str] = collections.Counter()
        self.request_started: tuple[Callable[[Flow], None], ...] = ()
        self.request_chunk: tuple[Callable[[Flow, bytes], None], ...] = ()
        self.response_started: tuple[Callable[[Flow], None], ...] = ()
        self.response_chunk: tuple[Callable[[Flow, bytes], None], ...] = ()
        self.request_finished: tuple[Callable[[Flow], None], ...] = ()
        self._dispatch()

    def _dispatch(self) -> None:
        # Each tuple is replaced whole: a request in flight keeps the one it read.
        active = [addon for addon in self.addons if getattr(addon, "active", True)]
        self.request_started = self._hooks(active, "request_started")
        self.request_chunk = self._hooks(active, "request_chunk")
        self.response_started = self._hooks(active, "response_started")
        self.response_chunk = self._hooks(active, "response_chunk")
        self.request_finished = self._hooks(active, "request_finished")

    @staticmethod
    def _hooks(addons: Sequence[object], name: str) -> tuple[Any, ...]:
        return tuple(getattr(addon, name) for addon in addons if callable(getattr(addon, name, None)))

    async def configure(self, table: RouteTable) -> None:
        """Hand every addon the table in force; a failing `configure` is logged and counted."""
        for addon in self.addons:
            configure = getattr(addon, "configure", None)
            if configure is None:
                continue
            try:
                result = configure(table)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._failed(addon, "configure")
        self._dispatch()

    def find(self, kind: type) -> Any | None:
        """The first addon that is an instance of `kind`, or None."""
        return next((addon for addon in self.addons if isinstance(addon, kind)), None)

    async def start(self) -> None:
        started: list[object] = []
        try:
            for addon in self.addons:
                start = getattr(addon, "start", None)
                if start is not None:
                    await start()
                started.append(addon)
        except BaseException:
            await self._stop(started)
            raise

    async def stop(self) -> None:
        await self._stop(self.addons)

    async def _stop(self, addons: Sequence[object]) -> None:
        for addon in reversed(addons):
            stop = getattr(addon, "stop", None)
            if stop is None:
                continue
            try:
                await stop()
            except Exception:
                self._failed(addon, "stop")

    def _failed(self, hook: Any, name: str) -> None:
        owner = getattr(hook, "__self__", hook)
        key = f"{type(owner).__name__}.{name}"
        self.failures[key] += 1
        log.exception("addon hook %s failed; the request carries on", key)

    # Dispatch: plain loops over precomputed tuples. The proxy checks the tuple before calling
    # the chunk dispatchers, so addons without chunk hooks add no per-chunk work.

    def flow_event(self, hooks: tuple[Callable[[Flow], None], ...], flow: Flow, name: str) -> None:
        for hook in hooks:
            try:
                hook(flow)
            except Exception:
                self._failed(hook, name)

    def chunk_event(self, hooks: tuple[Callable[[Flow, bytes], None], ...], flow: Flow, data: bytes, name: str) -> None:
        for hook in hooks:
            try:
                hook(flow, data)
            except Exception:
                self._failed(hook, name)
