"""The catalog's JSON API (`/api/products`, `/api/categories`) and its HTML pages."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from monolith.accounts.sessions import current_user
from monolith.catalog import services
from monolith.catalog.contract import parse_product_query, validate_product
from monolith.db import run_db
from monolith.exceptions import ApiError, PermissionDenied
from monolith.web import conditional, paginated, read_json


async def require_staff(request: Request) -> None:
    """Catalog writes need a staff session: 403 otherwise, before the body is even read."""
    identity = await current_user(request)
    if identity is None:
        raise PermissionDenied("Authentication credentials were not provided.")
    if not identity.is_staff:
        raise PermissionDenied()


async def product_list(request: Request) -> Response:
    """GET /api/products: paginated, filtered, ordered."""
    query = parse_product_query(request.query_params)
    count, results = await run_db(request, services.list_products, query)
    return JSONResponse(paginated(request, count=count, page=query.page, page_size=query.page_size, results=results))


async def product_create(request: Request) -> Response:
    """POST /api/products (staff)."""
    await require_staff(request)
    changes = validate_product(await read_json(request), partial=False)
    return JSONResponse(await run_db(request, services.create_product, changes), status_code=201)


async def product_detail(request: Request) -> Response:
    """GET /api/products/{id}, with an ETag; a matching If-None-Match gets 304 (conditional GET)."""
    return conditional(request, JSONResponse(await run_db(request, services.get_product, request.path_params["id"])))


async def product_update(request: Request) -> Response:
    """PUT (all required fields) or PATCH (any subset) /api/products/{id} (staff)."""
    await require_staff(request)
    changes = validate_product(await read_json(request), partial=request.method == "PATCH")
    return JSONResponse(await run_db(request, services.update_product, request.path_params["id"], changes))


async def product_delete(request: Request) -> Response:
    """DELETE /api/products/{id} (staff): 204."""
    await require_staff(request)
    await run_db(request, services.delete_product, request.path_params["id"])
    return Response(status_code=204)


async def category_list(request: Request) -> Response:
    """GET /api/categories: every category, by id."""
    return JSONResponse(await run_db(request, services.list_categories))


async def product_list_page(request: Request) -> Response:
    """GET /: the shop's front page, a page of products."""
    try:
        query = parse_product_query(request.query_params)
        count, products = await run_db(request, services.list_products, query)
    except ApiError as exc:
        return await render(request, "product_list.html", {"error": exc.body, "products": [], "count": 0}, 400)
    categories = await run_db(request, services.list_categories)
    pages = max(1, -(-count // query.page_size))
    context = {"products": products, "count": count, "page": query.page, "pages": pages, "query": query,
               "categories": categories, "error": None}
    return await render(request, "product_list.html", context, 200)


async def product_detail_page(request: Request) -> Response:
    """GET /products/{id}: one product with the order form."""
    try:
        product = await run_db(request, services.get_product, request.path_params["id"])
    except ApiError:
        return await render(request, "404.html", {}, 404)
    return await render(request, "product_detail.html", {"product": product, "error": None}, 200)


async def render(request: Request, template: str, context: dict[str, object], status: int) -> Response:
    """A Jinja2 page with the logged-in user (if any) in its context."""
    user = await current_user(request)
    response: Response = request.app.state.templates.TemplateResponse(
        request, template, {**context, "user": user}, status_code=status
    )
    return response
