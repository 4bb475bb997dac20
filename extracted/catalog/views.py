"""The catalog service's HTTP API: the same contract as the monolith's catalog endpoints."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from extracted.catalog import store
from extracted.catalog.contract import parse_product_query, validate_product
from extracted.catalog.db import run_db
from extracted.catalog.exceptions import PermissionDenied
from extracted.catalog.sessions import SESSION_COOKIE, SessionValidator
from extracted.catalog.web import conditional, paginated, read_json


async def require_staff(request: Request) -> None:
    """Writes need a staff session of the monolith: 403 otherwise, before the body is read."""
    key = request.cookies.get(SESSION_COOKIE, "")
    sessions: SessionValidator = request.app.state.session_validator
    identity = await sessions.identity(key) if key else None
    if identity is None:
        raise PermissionDenied("Authentication credentials were not provided.")
    if not identity.is_staff:
        raise PermissionDenied()


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def product_list(request: Request) -> Response:
    """GET /api/products: paginated, filtered, ordered."""
    query = parse_product_query(request.query_params)
    count, results = await run_db(request, store.list_products, query)
    return JSONResponse(paginated(request, count=count, page=query.page, page_size=query.page_size, results=results))


async def product_create(request: Request) -> Response:
    """POST /api/products (staff)."""
    await require_staff(request)
    changes = validate_product(await read_json(request), partial=False)
    return JSONResponse(await run_db(request, store.create_product, changes), status_code=201)


async def product_detail(request: Request) -> Response:
    """GET /api/products/{id}, with an ETag; a matching If-None-Match gets 304 (conditional GET)."""
    if request.path_params["id"] % 100 < request.app.state.demo_errors:
        return demo_error(request.path_params["id"], request.app.state.demo_errors)
    product = await run_db(request, store.get_product, request.path_params["id"])
    if request.app.state.demo_discrepancy:
        product = with_demo_discrepancy(product)
    return conditional(request, JSONResponse(product))


def with_demo_discrepancy(product: dict[str, Any]) -> dict[str, Any]:
    """The deliberate bug the demo switches on (`serve --demo-discrepancy`) so that shadow
    traffic has something real to find: prices rendered as if the cents had been rounded away
    through a float (a classic migration slip), so products priced with cents differ in
    `$.price`, and the `attributes` field of products in stock is left out."""
    changed = dict(product)
    whole = int(float(changed["price"]) + 0.5)
    changed["price"] = f"{whole}.00"
    if changed.get("stock", 0) > 0:
        changed.pop("attributes", None)
    return changed


def demo_error(product_id: int, percent: int) -> Response:
    """The deliberate fault the demo switches on (`serve --demo-errors PERCENT`) so that the
    cutover's error-rate gate has something to catch: the details of products whose id modulo 100
    is below PERCENT answer 500, as a bad build would."""
    return JSONResponse(
        {"detail": f"demo fault: product {product_id} fails on purpose (serve --demo-errors {percent}); restart without it"},
        status_code=500,
    )


async def product_update(request: Request) -> Response:
    """PUT (all required fields) or PATCH (any subset) /api/products/{id} (staff)."""
    await require_staff(request)
    changes = validate_product(await read_json(request), partial=request.method == "PATCH")
    return JSONResponse(await run_db(request, store.update_product, request.path_params["id"], changes))


async def product_delete(request: Request) -> Response:
    """DELETE /api/products/{id} (staff): 204."""
    await require_staff(request)
    await run_db(request, store.delete_product, request.path_params["id"])
    return Response(status_code=204)


async def category_list(request: Request) -> Response:
    """GET /api/categories: every category, by id."""
    return JSONResponse(await run_db(request, store.list_categories))


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/api/products", product_list, methods=["GET"]),
    Route("/api/products", product_create, methods=["POST"]),
    Route("/api/products/{id:int}", product_detail, methods=["GET"]),
    Route("/api/products/{id:int}", product_update, methods=["PUT", "PATCH"]),
    Route("/api/products/{id:int}", product_delete, methods=["DELETE"]),
    Route("/api/categories", category_list, methods=["GET"]),
]
