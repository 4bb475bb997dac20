"""The external catalog API contract, as pure functions: list parameters, write validation.

The monolith implements the same contract (monolith/catalog/contract.py); the parity tests
hold the two together. It is a copy on purpose, not an import: an extracted service ships and
deploys without the monolith's code, and once the monolith's catalog is retired this copy is
the only one left. Values here are in the API's terms (name, price, is_active); the store
translates them (title, price_cents, active).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from extracted.catalog.exceptions import NotFound, ValidationError
from extracted.catalog.web import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

ORDERINGS = ("id", "-id", "price", "-price", "name", "-name")
MAX_PRICE = Decimal("99999999.99")
MAX_INT = 2**31 - 1
REQUIRED = ("sku", "name", "price", "category")
_SLUG = re.compile(r"^[-a-zA-Z0-9_]+$")
_TRUE = {"true", "True", "1"}
_FALSE = {"false", "False", "0"}


@dataclass(frozen=True, kw_only=True)
class ProductQuery:
    """What `GET /api/products` asked for, validated."""

    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE
    category: str | None = None
    q: str | None = None
    min_price: Decimal | None = None
    max_price: Decimal | None = None
    in_stock: bool | None = None
    ordering: str = "id"

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.page_size


def parse_product_query(params: Mapping[str, str]) -> ProductQuery:
    """Validate list parameters; empty values are ignored, as DRF's filters do.

    Raises `NotFound("Invalid page.")` for a page that is not a positive integer, and
    `ValidationError` for bad filter values or an unknown ordering.
    """
    errors: dict[str, list[str]] = {}
    page = 1
    raw_page = params.get("page", "")
    if raw_page:
        if not raw_page.isdigit() or int(raw_page) < 1:
            raise NotFound("Invalid page.")
        page = int(raw_page)
    page_size = DEFAULT_PAGE_SIZE
    raw_size = params.get("page_size", "")
    if raw_size.isdigit() and int(raw_size) > 0:
        page_size = min(int(raw_size), MAX_PAGE_SIZE)
    prices: dict[str, Decimal | None] = {}
    for key in ("min_price", "max_price"):
        raw = params.get(key, "")
        prices[key] = None
        if raw:
            try:
                value = Decimal(raw)
            except InvalidOperation:
                value = None
            if value is None or not value.is_finite():
                errors[key] = ["Enter a number."]
            else:
                prices[key] = value
    in_stock: bool | None = None
    raw_stock = params.get("in_stock", "")
    if raw_stock in _TRUE:
        in_stock = True
    elif raw_stock in _FALSE:
        in_stock = False
    elif raw_stock:
        errors["in_stock"] = ["Must be a valid boolean."]
    ordering = params.get("ordering", "") or "id"
    if ordering not in ORDERINGS:
        errors["ordering"] = [f"Unknown ordering {ordering!r}; use one of: {', '.join(ORDERINGS)}."]
    if errors:
        raise ValidationError(errors)
    return ProductQuery(
        page=page,
        page_size=page_size,
        category=params.get("category") or None,
        q=params.get("q") or None,
        min_price=prices["min_price"],
        max_price=prices["max_price"],
        in_stock=in_stock,
        ordering=ordering,
    )


def like_pattern(text: str) -> str:
    """A case-insensitive `contains` pattern for ILIKE with the wildcards of `text` escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def slugify(value: str) -> str:
    """Django's slugify: ASCII, lower case, runs of non-word characters to single hyphens."""
    value = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value.lower())
    return re.sub(r"[-\s]+", "-", value).strip("-_") or "product"


@dataclass(frozen=True, kw_only=True)
class ProductChanges:
    """Validated fields of a product write, in the API's terms; `None` means not given."""

    sku: str | None = None
    name: str | None = None
    slug: str | None = None
    description: str | None = None
    price: Decimal | None = None
    stock: int | None = None
    is_active: bool | None = None
    category: int | str | None = None
    attributes: dict[str, Any] | None = None


def validate_product(data: Any, *, partial: bool) -> ProductChanges:
    """Validate a product body for create/PUT (`partial=False`) or PATCH; raise `ValidationError`."""
    if not isinstance(data, dict):
        kind = "list" if isinstance(data, list) else type(data).__name__
        raise ValidationError({"non_field_errors": [f"Invalid data. Expected a dictionary, but got {kind}."]})
    errors: dict[str, list[str]] = {}
    values: dict[str, Any] = {}
    if not partial:
        for key in REQUIRED:
            if key not in data or data[key] is None:
                errors[key] = ["This field is required."]
    for key, check in _CHECKS.items():
        if key in data and data[key] is not None and key not in errors:
            try:
                values[key] = check(data[key])
            except _Invalid as exc:
                errors[key] = [str(exc)]
    if errors:
        raise ValidationError(errors)
    return ProductChanges(**values)


class _Invalid(Exception):
    pass


def _string(max_length: int, *, blank: bool = False) -> Any:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid("Not a valid string.")
        if not blank and not value.strip():
            raise _Invalid("This field may not be blank.")
        if len(value) > max_length:
            raise _Invalid(f"Ensure this field has no more than {max_length} characters.")
        return value

    return check


def _slug(value: Any) -> str:
    value = _string(200)(value)
    if not _SLUG.match(value):
        raise _Invalid('Enter a valid "slug" consisting of letters, numbers, underscores or hyphens.')
    return str(value)


def _price(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Invalid("A valid number is required.")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise _Invalid("A valid number is required.") from None
    if not number.is_finite():
        raise _Invalid("A valid number is required.")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2 and number != number.quantize(Decimal("0.01")):
        raise _Invalid("Ensure that there are no more than 2 decimal places.")
    if number < 0:
        raise _Invalid("Ensure this value is greater than or equal to 0.")
    if number > MAX_PRICE:
        raise _Invalid("Ensure that there are no more than 10 digits in total.")
    return number.quantize(Decimal("0.01"))


def _stock(value: Any) -> int:
    if isinstance(value, bool):
        raise _Invalid("A valid integer is required.")
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise _Invalid("A valid integer is required.")
    if value < 0:
        raise _Invalid("Ensure this value is greater than or equal to 0.")
    if value > MAX_INT:
        raise _Invalid(f"Ensure this value is less than or equal to {MAX_INT}.")
    return value


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in _TRUE or value == 1:
        return True
    if value in _FALSE or value == 0:
        return False
    raise _Invalid("Must be a valid boolean.")


def _category(value: Any) -> int | str:
    if isinstance(value, bool):
        raise _Invalid("Incorrect type. Expected pk value, received bool.")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, str) and value:
        return value
    raise _Invalid(f"Incorrect type. Expected pk value, received {type(value).__name__}.")


def _attributes(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f'Expected a dictionary of items but got type "{type(value).__name__}".')
    return value


_CHECKS = {
    "sku": _string(32),
    "name": _string(200),
    "slug": _slug,
    "description": _string(1_000_000, blank=True),
    "price": _price,
    "stock": _stock,
    "is_active": _boolean,
    "category": _category,
    "attributes": _attributes,
}


def unknown_category(value: int | str) -> ValidationError:
    """The 400 for a category id or slug that does not exist."""
    return ValidationError({"category": [f'Invalid pk "{value}" - object does not exist.']})


def duplicate_sku() -> ValidationError:
    return ValidationError({"sku": ["product with this sku already exists."]})
