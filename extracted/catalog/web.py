"""Request and response helpers at the service's boundary (the DRF-compatible bits of the contract)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from extracted.catalog.exceptions import ApiError

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON; a malformed or non-UTF-8 body is a 400, never a 500."""
    body = await request.body()
    try:
        return json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, {"detail": f"JSON parse error - {exc}"}) from exc


def api_error_response(request: Request, exc: Exception) -> Response:
    """Exception handler turning an `ApiError` into its JSON answer."""
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body, status_code=exc.status)


def external_base(request: Request) -> str:
    """`scheme://host` as the client sees it, honouring X-Forwarded-Proto/Host from the façade."""
    headers = request.headers
    proto = _first(headers.get("x-forwarded-proto")) or request.url.scheme
    host = _first(headers.get("x-forwarded-host")) or headers.get("host") or request.url.netloc
    return f"{proto}://{host}"


def _first(value: str | None) -> str:
    return value.split(",")[0].strip() if value else ""


def page_url(base: str, path: str, query: Iterable[tuple[str, str]], page: int | None) -> str:
    """The absolute URL of another page of a list, DRF style: query keys sorted, page 1 has no `page`."""
    pairs = [(k, v) for k, v in query if k != "page"]
    if page is not None and page > 1:
        pairs.append(("page", str(page)))
    pairs.sort(key=lambda kv: kv[0])
    encoded = urlencode(pairs)
    return f"{base}{path}?{encoded}" if encoded else f"{base}{path}"


def paginated(request: Request, *, count: int, page: int, page_size: int, results: list[Any]) -> dict[str, Any]:
    """DRF's page-number pagination envelope with absolute next/previous links."""
    base = external_base(request)
    query = request.query_params.multi_items()
    has_next = page * page_size < count
    return {
        "count": count,
        "next": page_url(base, request.url.path, query, page + 1) if has_next else None,
        "previous": page_url(base, request.url.path, query, page - 1) if page > 1 else None,
        "results": results,
    }


def iso(value: datetime) -> str:
    """ISO 8601 in UTC with a `Z`, as DRF renders datetimes."""
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def money(cents: int) -> str:
    """Integer cents as the legacy API renders prices: a string with exactly two decimals."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


def to_cents(value: Decimal) -> int:
    """A validated price (at most two decimals) in integer cents."""
    return int((value * 100).to_integral_value())


def conditional(request: Request, response: Response) -> Response:
    """Django's ConditionalGetMiddleware for one response: a strong ETag from the body, and 304
    without a body when the client's If-None-Match already names it."""
    etag = '"' + hashlib.sha1(response.body).hexdigest() + '"'
    wanted = request.headers.get("if-none-match", "")
    if wanted and (wanted.strip() == "*" or etag in [tag.strip() for tag in wanted.split(",")]):
        return Response(status_code=304, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return response
