"""The admin API under `/_strangler/` (Starlette; the request path itself never goes through it).

- `GET health`: liveness and the config version.
- `GET routes`: the live table with `version`, `loaded_at`, `last_error` (problems as
  `file:line:col: message`), the last reload and the breaker states.
- `GET metrics`: Prometheus text exposition.
- `POST reload`: reload `routing.yaml` now; 200 with the new version, 422 with the problems.
- `GET <name>` for addons that expose a `snapshot()` (e.g. `shadow`).

A bearer token is required on every endpoint unless the façade listens only on loopback.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from facade.breaker import STATE_NAMES
from facade.metrics import CONTENT_TYPE, Metrics
from facade.proxy import Proxy
from facade.reload import Reloader

__all__ = ["AdminAuth", "build_admin"]

PREFIX = "/_strangler"


class AdminAuth:
    """ASGI wrapper demanding `Authorization: Bearer <token>` when a token is required."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token is not None else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.token is not None and scope["type"] == "http":
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = value
                    break
            scheme, _, credentials = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self.token):
                response = JSONResponse(
                    {"error": "unauthorized", "detail": "the admin API needs 'Authorization: Bearer <token>' with the configured admin token"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="strangler"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_admin(
    *,
    proxy: Proxy,
    reloader: Reloader,
    metrics: Metrics,
    snapshots: dict[str, Callable[[], Any]],
    token: str | None,
) -> AdminAuth:
    """The admin ASGI app (with its auth wrapper) over the façade's live parts."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": reloader.version, "inflight": proxy.inflight})

    async def routes(request: Request) -> Response:
        table = proxy.generation.table
        body = reloader.status()
        body["version"] = table.version
        body["table"] = table.as_dict()
        body["breakers"] = {name: STATE_NAMES[state] for name, state in proxy.breakers.states().items()}
        return JSONResponse(body)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def reload(request: Request) -> Response:
        result = await reloader.reload("api")
        return JSONResponse(result.as_dict(), status_code=200 if result.ok else 422)

    def snapshot_endpoint(name: str, snapshot: Callable[[], Any]) -> Route:
        async def endpoint(request: Request) -> Response:
            return JSONResponse(snapshot())

        return Route(f"{PREFIX}/{name}", endpoint, methods=["GET"], name=f"addon-{name}")

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        reason = "method_not_allowed" if status == 405 else "not_found"
        known = ", ".join(sorted({"health", "routes", "metrics", "reload", *snapshots}))
        return JSONResponse(
            {"error": reason, "detail": f"{request.method} {request.url.path} is not part of the admin API; endpoints: {known}"},
            status_code=status,
        )

    app = Starlette(
        routes=[
            Route(f"{PREFIX}/health", health, methods=["GET"]),
            Route(f"{PREFIX}/routes", routes, methods=["GET"]),
            Route(f"{PREFIX}/metrics", metrics_endpoint, methods=["GET"]),
            Route(f"{PREFIX}/reload", reload, methods=["POST"]),
            *(snapshot_endpoint(name, snapshot) for name, snapshot in snapshots.items()),
        ],
        exception_handlers={404: not_found, 405: not_found},
    )
    return AdminAuth(app, token)
