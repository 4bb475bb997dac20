"""The admin API under `/_strangler/` (Starlette; the request path itself never goes through it).

- `GET health`: liveness and the config version.
- `GET routes`: the live table with `version`, `loaded_at`, `last_error` (problems as
  `file:line:col: message`), the last reload and the breaker states.
- `GET metrics`: Prometheus text exposition.
- `POST reload`: reload `routing.yaml` now; 200 with the new version, 422 (`invalid_config`) with the problems.
- `GET hold`: the write holds across every worker of this replica (`facade.hold`): per hold id
  whether it is acked (installed and drained in all workers), workers seen / expected, held
  requests, oldest wait, in-flight requests on its routes; `?id=` narrows it to one hold.
- `GET drain?route=R&route=S&seconds=N`: how long a hold on those routes would wait, expected,
  for the requests in flight when it lands, how many are in flight and how long the fastest take
  (`facade.drain`), measured on this worker's requests of the last N seconds (default 2, at most 60).
- `GET <name>` for addons that expose a `snapshot()` (e.g. `shadow`).

A bearer token is required on every endpoint unless the façade listens only on loopback. Every
answer carries `X-Request-ID` (the client's, or a new one); errors are JSON like the proxy's:
`{"error", "detail", "request_id"}`.
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
from facade.proxy import Proxy, request_id_for
from facade.reload import Reloader

__all__ = ["AdminAuth", "build_admin"]

PREFIX = "/_strangler"


def _error_response(request_id: str, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error the admin API answers itself, in the proxy's JSON shape."""
    body = {"error": reason, "detail": detail, "request_id": request_id}
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


class AdminAuth:
    """ASGI wrapper in front of the admin API: gives the request its id (kept in the scope's
    state, sent back as `X-Request-ID`) and demands `Authorization: Bearer <token>` when a
    token is required."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token.encode("utf-8") if token is not None else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given: bytes | None = None
        authorization: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
            elif name == b"authorization" and authorization is None:
                authorization = value
        request_id = request_id_for(given)[0].decode("ascii")
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode("ascii"))

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        if self.token is not None:
            scheme, _, credentials = (authorization or b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self.token):
                response = _error_response(
                    request_id, 401, "unauthorized",
                    "the admin API needs 'Authorization: Bearer <token>' with the configured admin token",
                    headers={"WWW-Authenticate": 'Bearer realm="strangler"'},
                )
                await response(scope, receive, send_with_id)
                return
        await self.app(scope, receive, send_with_id)


def build_admin(
    *,
    proxy: Proxy,
    reloader: Reloader,
    metrics: Metrics,
    snapshots: dict[str, Callable[[], Any]],
    token: str | None,
    after_reload: Callable[[], None] | None = None,
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
        body = result.as_dict()
        if result.ok:
            if after_reload is not None:
                after_reload()
            return JSONResponse(body)
        count = len(result.problems)
        body.update(
            error="invalid_config",
            detail=f"{reloader.path} has {count} problem{'s' if count != 1 else ''}; still serving version {result.version}",
            request_id=request.state.request_id,
        )
        return JSONResponse(body, status_code=422)

    async def hold(request: Request) -> Response:
        report = proxy.holds.report()
        wanted = request.query_params.get("id")
        if wanted is not None:
            known = [item["id"] for item in report["holds"]]
            report["holds"] = [item for item in report["holds"] if item["id"] == wanted]
            if not report["holds"]:
                detail = f"no worker has a hold {wanted!r}; holds: {', '.join(known) or '(none)'}"
                return _error_response(request.state.request_id, 404, "unknown_hold", detail)
        return JSONResponse(report)

    async def drain(request: Request) -> Response:
        routes = request.query_params.getlist("route")
        raw = request.query_params.get("seconds", "2")
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not routes or not 0 < seconds <= 60:
            detail = f"give one or more ?route= and ?seconds= in (0, 60]; got routes {routes}, seconds {raw!r}"
            return _error_response(request.state.request_id, 400, "bad_request", detail)
        known = {route.id for route in proxy.generation.table.all_routes}
        unknown = [route for route in routes if route not in known]
        if unknown:
            detail = f"no route {', '.join(map(repr, unknown))} in the table; routes: {', '.join(sorted(known))}"
            return _error_response(request.state.request_id, 404, "unknown_route", detail)
        return JSONResponse({"routes": routes, **proxy.holds.recent.drain(routes, seconds)})

    def snapshot_endpoint(name: str, snapshot: Callable[[], Any]) -> Route:
        async def endpoint(request: Request) -> Response:
            return JSONResponse(snapshot())

        return Route(f"{PREFIX}/{name}", endpoint, methods=["GET"], name=f"addon-{name}")

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        reason = "method_not_allowed" if status == 405 else "not_found"
        known = ", ".join(sorted({"health", "routes", "metrics", "reload", "hold", "drain", *snapshots}))
        detail = f"{request.method} {request.url.path} is not part of the admin API; endpoints: {known}"
        headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else None  # 405's Allow
        return _error_response(request.state.request_id, status, reason, detail, headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        detail = f"{request.method} {request.url.path} failed: {exc!r}; the façade's log has the traceback"
        return _error_response(request.state.request_id, 500, "admin_error", detail)

    app = Starlette(
        routes=[
            Route(f"{PREFIX}/health", health, methods=["GET"]),
            Route(f"{PREFIX}/routes", routes, methods=["GET"]),
            Route(f"{PREFIX}/metrics", metrics_endpoint, methods=["GET"]),
            Route(f"{PREFIX}/reload", reload, methods=["POST"]),
            Route(f"{PREFIX}/hold", hold, methods=["GET"]),
            Route(f"{PREFIX}/drain", drain, methods=["GET"]),
            *(snapshot_endpoint(name, snapshot) for name, snapshot in snapshots.items()),
        ],
        exception_handlers={404: not_found, 405: not_found, Exception: server_error},
    )
    return AdminAuth(app, token)
