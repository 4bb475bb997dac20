"""Placing and listing orders: the JSON API and the HTML form flow."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from monolith.accounts.sessions import Identity, current_user
from monolith.catalog import services as catalog
from monolith.catalog.views import render
from monolith.db import run_db
from monolith.exceptions import ApiError, PermissionDenied
from monolith.orders import services
from monolith.web import read_json


async def _require_user(request: Request) -> Identity:
    identity = await current_user(request)
    if identity is None:
        raise PermissionDenied("Authentication credentials were not provided.")
    return identity


async def order_create(request: Request) -> Response:
    """POST /api/orders `{"items": [{"product_id", "quantity"}]}`: 201, or 409 on insufficient stock."""
    identity = await _require_user(request)
    lines = services.parse_items(await read_json(request))
    return JSONResponse(await run_db(request, services.place_order, identity.id, lines), status_code=201)


async def order_list(request: Request) -> Response:
    """GET /api/orders: the session user's orders."""
    identity = await _require_user(request)
    return JSONResponse(await run_db(request, services.list_orders, identity.id))


async def order_form_post(request: Request) -> Response:
    """POST /orders/new from the product page's form: 303 to /orders, or the page again with the error."""
    form = await request.form()
    raw_id, raw_quantity = str(form.get("product_id", "")), str(form.get("quantity", "1"))
    identity = await current_user(request)
    if identity is None:
        target = f"/products/{raw_id}" if raw_id.isdigit() else "/"
        return RedirectResponse(f"/accounts/login?next={target}", status_code=303)
    if not raw_id.isdigit():
        return RedirectResponse("/", status_code=303)
    try:
        quantity = int(raw_quantity)
        lines = services.parse_items({"items": [{"product_id": int(raw_id), "quantity": quantity}]})
        await run_db(request, services.place_order, identity.id, lines)
    except (ApiError, ValueError) as exc:
        message = _message(exc)
        try:
            product = await run_db(request, catalog.get_product, int(raw_id))
        except ApiError:
            return RedirectResponse("/", status_code=303)
        status = exc.status if isinstance(exc, ApiError) else 400
        return await render(request, "product_detail.html", {"product": product, "error": message}, status)
    return RedirectResponse("/orders", status_code=303)


def _message(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        detail = exc.body.get("detail")
        if isinstance(detail, str):
            return detail
        return "; ".join(str(m) for messages in exc.body.values() for m in (messages if isinstance(messages, list) else [messages]))
    return "Quantity must be a whole number."


async def order_list_page(request: Request) -> Response:
    """GET /orders: the user's orders (login required)."""
    identity = await current_user(request)
    if identity is None:
        return RedirectResponse("/accounts/login?next=/orders", status_code=303)
    orders = await run_db(request, services.list_orders, identity.id)
    return await render(request, "order_list.html", {"orders": orders}, 200)
