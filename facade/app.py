"""The façade as one ASGI application: the proxy core, the admin API beside it, and a lifespan.

`create_app(config_path)` validates `routing.yaml` (raising `ConfigError` with every problem),
checks that the admin API is protected when it is reachable from other hosts, and composes the
parts: proxy core, upstream client, breakers, addons (metrics and access log built in, the rest
passed in by whoever starts the façade, e.g. shadowing by `strangler facade serve`), reloader and
admin API. `/_strangler/...` goes to the admin API; every other HTTP request to the proxy. The
addons are configured with the table at start and after every successful reload.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from facade.accesslog import AccessLog
from facade.addons import AddonManager
from facade.admin import build_admin
from facade.breaker import Breakers
from facade.client import H1Client, UpstreamClient
from facade.config import FacadeConfig
from facade.errors import AdminTokenMissing
from facade.hold import Holds
from facade.metrics import Metrics
from facade.proxy import Proxy
from facade.reload import Reloader, file_signature, load_table
from facade.routing import path_problem

__all__ = ["AddonFactory", "FacadeApp", "admin_token", "app_from_env", "create_app", "is_loopback"]

log = logging.getLogger("strangler.facade")

CONFIG_ENV = "STRANGLER_FACADE_CONFIG"
HOST_ENV = "STRANGLER_FACADE_HOST"
ACCESS_LOG_ENV = "STRANGLER_FACADE_ACCESS_LOG"
WATCH_ENV = "STRANGLER_FACADE_WATCH"
SUPERVISOR_ENV = "STRANGLER_FACADE_SUPERVISOR"
WORKERS_ENV = "STRANGLER_FACADE_WORKERS"

AddonFactory = Callable[[Path], object]
"""Builds an addon for the routing file at the given (absolute) path."""


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the façade reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def admin_token(config: FacadeConfig, env: Mapping[str, str]) -> str | None:
    """The admin bearer token: `admin.token`, else the variable named by `admin.token_env`."""
    admin = config.admin
    if admin.token:
        return admin.token
    if admin.token_env:
        return env.get(admin.token_env) or None
    return None


class FacadeApp:
    """ASGI entry point: dispatches to the admin API or the proxy, runs the lifespan."""

    def __init__(self, *, proxy: Proxy, admin: Any, reloader: Reloader, addons: AddonManager, watch: bool = True) -> None:
        self.proxy = proxy
        self.admin = admin
        self.reloader = reloader
        self.addons = addons
        self.watch = watch
        self.started = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            # Only the canonical form reaches the admin API; the proxy refuses the others.
            if (path.startswith("/_strangler/") or path == "/_strangler") and path_problem(scope.get("raw_path") or b"", path) is None:
                await self.admin(scope, receive, send)
            else:
                await self.proxy(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            # WebSockets are not proxied.
            await send({"type": "websocket.close", "code": 1003})

    async def startup(self) -> None:
        await self.addons.start()
        await self.addons.configure(self.reloader.table)
        self.reloader.start(watch=self.watch)
        self.proxy.holds.start()
        self.started = True

    async def shutdown(self) -> None:
        await self.reloader.stop()
        self.proxy.holds.stop()
        await self.proxy.aclose()
        await self.addons.stop()
        self.started = False

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("the façade failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                with contextlib.suppress(Exception):
                    await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(
    config_path: str | os.PathLike[str],
    *,
    addons: Iterable[object] = (),
    addon_factories: Sequence[AddonFactory] = (),
    client: UpstreamClient | None = None,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    watch: bool = True,
    watch_interval: float = 0.5,
    access_log: TextIO | None = None,
    after_api_reload: Callable[[], None] | None = None,
    hold_group: str | None = None,
    workers: int = 1,
) -> FacadeApp:
    """Build the façade for `config_path`, to be served on `host`.

    `addons` run after the built-in metrics and access log, then one addon from each of
    `addon_factories` (called with the file's absolute path). `client` replaces the aiohttp upstream client. `env` (default
    `os.environ`) supplies `${VAR}` interpolation and the admin token. `access_log` is a stream
    for the JSON access lines (buffered); without it they go to the `strangler.access` logger.
    `after_api_reload` runs after each `POST /_strangler/reload` (a worker tells its siblings).
    The workers of one replica share `hold_group` (default: this app alone) and there are
    `workers` of them: each keeps its hold state in `.strangler/hold/<group>/` beside the file. Raises `ConfigError` for an
    invalid file and `AdminTokenMissing` when a non-loopback bind would leave the admin API open.
    """
    env = os.environ if env is None else env
    path = Path(config_path)
    signature = file_signature(path)  # before reading: an edit made meanwhile is reloaded
    table, digest, loaded_at = load_table(path, env)
    config = table.config
    token = admin_token(config, env)
    if token is None and not is_loopback(host):
        variable = config.admin.token_env or "STRANGLER_ADMIN_TOKEN"
        raise AdminTokenMissing(
            f"the façade would listen on {host}, reachable from other hosts, but the admin API has no token: "
            f"set the environment variable {variable} (named by admin.token_env in {path}) or bind to 127.0.0.1"
        )
    metrics = Metrics()
    extra = [*addons, *(factory(path.resolve()) for factory in addon_factories)]
    for addon in extra:
        if callable(getattr(addon, "collect", None)):
            metrics.registry.register(addon)  # an addon with its own Prometheus numbers (shadow)
    manager = AddonManager([metrics, AccessLog(stream=access_log), *extra])
    breakers = Breakers(config.breaker)
    override_secrets = None if is_loopback(host) else [
        secret for secret in (token, env.get(config.assignment.override_token_env or "")) if secret
    ]
    # The host name keeps replicas apart that share a volume (and, in containers, pids).
    group = f"{socket.gethostname()}-{hold_group or f'{os.getpid()}-{secrets.token_hex(4)}'}"
    holds = Holds(directory=path.resolve().parent / ".strangler" / "hold" / group, workers=workers, observer=metrics)
    metrics.held_now = holds.held_counts
    proxy = Proxy(table, client=client or H1Client(), addons=manager, breakers=breakers, holds=holds,
                  override_secrets=override_secrets)
    reloader = Reloader(
        path, table, digest, loaded_at, install=proxy.swap, configure=manager.configure, env=env,
        on_result=[lambda result: metrics.reloaded(result.ok)], interval=watch_interval, signature=signature,
    )
    metrics.breaker_states = breakers.states
    metrics.config_info = lambda: (reloader.version, str(reloader.status()["loaded_at"]))
    metrics.addon_failures = lambda: manager.failures
    snapshots = {
        _addon_name(addon): getattr(addon, "snapshot") for addon in extra if callable(getattr(addon, "snapshot", None))
    }
    admin = build_admin(
        proxy=proxy, reloader=reloader, metrics=metrics, snapshots=snapshots,
        token=token if not is_loopback(host) else None, after_reload=after_api_reload,
    )
    return FacadeApp(proxy=proxy, admin=admin, reloader=reloader, addons=manager, watch=watch)


def _addon_name(addon: object) -> str:
    name = getattr(addon, "admin_name", None) or type(addon).__name__.lower().removesuffix("addon")
    return str(name)


def app_from_env(addon_factories: Sequence[AddonFactory] = ()) -> FacadeApp:
    """For the factory of `uvicorn --factory` workers (which passes its `addon_factories`): the
    config path and bind host come from the environment the serve command sets (`STRANGLER_FACADE_CONFIG`, `STRANGLER_FACADE_HOST`,
    `STRANGLER_FACADE_ACCESS_LOG`: `stdout` for buffered lines on stdout, else the logger;
    `STRANGLER_FACADE_WATCH`: `0` to not watch the file; `STRANGLER_FACADE_SUPERVISOR`: the pid
    of `facade serve`'s worker supervisor; `STRANGLER_FACADE_WORKERS`: how many workers it runs)."""
    stream = sys.stdout if os.environ.get(ACCESS_LOG_ENV) == "stdout" else None
    supervisor = int(os.environ.get(SUPERVISOR_ENV) or 0)
    if supervisor:
        # Until the reloader takes SIGHUP over at startup, a forwarded one must not end the worker.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # A reload asked of one worker reaches all: our supervisor forwards SIGHUP to each worker.
    # Only ours: another process manager's parent may take SIGHUP as "restart everything".
    broadcast = (lambda: os.kill(supervisor, signal.SIGHUP)) if supervisor and supervisor == os.getppid() else None
    return create_app(
        os.environ[CONFIG_ENV], host=os.environ.get(HOST_ENV, "127.0.0.1"), access_log=stream,
        watch=os.environ.get(WATCH_ENV, "1") != "0", after_api_reload=broadcast, addon_factories=addon_factories,
        hold_group=f"supervisor-{supervisor}" if supervisor else None, workers=int(os.environ.get(WORKERS_ENV) or 1),
    )
