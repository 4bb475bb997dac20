"""Catalog reads and writes on a database session (blocking; views run them in the thread pool)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession

from monolith.catalog.contract import (
    ProductChanges,
    ProductQuery,
    duplicate_sku,
    like_pattern,
    slugify,
    unknown_category,
)
from monolith.catalog.models import Category, Product
from monolith.exceptions import NotFound
from monolith.web import iso, money

MAX_ID = 2**31 - 1

_ORDER_BY = {
    "id": (Product.id.asc(),),
    "-id": (Product.id.desc(),),
    "price": (Product.price.asc(), Product.id.asc()),
    "-price": (Product.price.desc(), Product.id.desc()),
    "name": (Product.name.asc(), Product.id.asc()),
    "-name": (Product.name.desc(), Product.id.desc()),
}


def product_json(product: Product, category: Category | None) -> dict[str, Any]:
    """A product as the external API shows it."""
    return {
        "id": product.id,
        "sku": product.sku,
        "name": product.name,
        "slug": product.slug,
        "description": product.description,
        "price": money(product.price),
        "stock": product.stock,
        "is_active": product.is_active,
        "category": {"id": category.id, "slug": category.slug, "name": category.name} if category else None,
        "attributes": product.attributes,
        "created_at": iso(product.created_at),
        "updated_at": iso(product.updated_at),
    }


def _conditions(query: ProductQuery) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Product.is_active.is_(True)]
    if query.category is not None:
        conditions.append(Category.slug == query.category)
    if query.q is not None:
        pattern = like_pattern(query.q)
        conditions.append(or_(Product.name.ilike(pattern, escape="\\"), Product.sku.ilike(pattern, escape="\\")))
    if query.min_price is not None:
        conditions.append(Product.price >= query.min_price)
    if query.max_price is not None:
        conditions.append(Product.price <= query.max_price)
    if query.in_stock is True:
        conditions.append(Product.stock > 0)
    elif query.in_stock is False:
        conditions.append(Product.stock == 0)
    return conditions


def list_products(db: DbSession, query: ProductQuery) -> tuple[int, list[dict[str, Any]]]:
    """The count of matching active products and the requested page of them."""
    conditions = _conditions(query)
    count_stmt = select(func.count()).select_from(Product)
    if query.category is not None:
        count_stmt = count_stmt.join(Category, Category.id == Product.category_id)
    count = db.execute(count_stmt.where(*conditions)).scalar_one()
    if query.page > 1 and query.offset >= count:
        raise NotFound("Invalid page.")
    stmt = (
        select(Product, Category)
        .join(Category, Category.id == Product.category_id)
        .where(*conditions)
        .order_by(*_ORDER_BY[query.ordering])
        .offset(query.offset)
        .limit(query.page_size)
    )
    return count, [product_json(p, c) for p, c in db.execute(stmt)]


def _active_product(db: DbSession, product_id: int, *, lock: bool = False) -> tuple[Product, Category | None]:
    if product_id > MAX_ID:
        raise NotFound()
    # One statement for the product and its category (a write locks the product's row only).
    stmt = select(Product, Category).join(Category, Category.id == Product.category_id).where(
        Product.id == product_id, Product.is_active.is_(True)
    )
    row = db.execute(stmt.with_for_update(of=Product) if lock else stmt).one_or_none()
    if row is None:
        raise NotFound()
    return row[0], row[1]


def get_product(db: DbSession, product_id: int) -> dict[str, Any]:
    product, category = _active_product(db, product_id)
    return product_json(product, category)


def list_categories(db: DbSession) -> list[dict[str, Any]]:
    rows = db.execute(select(Category).order_by(Category.id)).scalars()
    return [{"id": c.id, "slug": c.slug, "name": c.name, "parent_id": c.parent_id} for c in rows]


def _resolve_category(db: DbSession, ref: int | str) -> Category:
    if isinstance(ref, int):
        category = db.get(Category, ref) if ref <= MAX_ID else None
    else:
        category = db.execute(select(Category).where(Category.slug == ref)).scalar_one_or_none()
    if category is None:
        raise unknown_category(ref)
    return category


def _check_sku_free(db: DbSession, sku: str, product_id: int | None) -> None:
    stmt = select(Product.id).where(Product.sku == sku)
    if product_id is not None:
        stmt = stmt.where(Product.id != product_id)
    if db.execute(stmt).first() is not None:
        raise duplicate_sku()


def create_product(db: DbSession, changes: ProductChanges) -> dict[str, Any]:
    """Insert a product from validated (non-partial) changes; return its JSON."""
    assert changes.sku is not None and changes.name is not None and changes.price is not None
    assert changes.category is not None
    category = _resolve_category(db, changes.category)
    _check_sku_free(db, changes.sku, None)
    now = datetime.now(UTC)
    product = Product(
        sku=changes.sku,
        name=changes.name,
        slug=changes.slug or slugify(changes.name),
        description=changes.description if changes.description is not None else "",
        price=changes.price,
        stock=changes.stock if changes.stock is not None else 0,
        is_active=changes.is_active if changes.is_active is not None else True,
        category_id=category.id,
        attributes=changes.attributes if changes.attributes is not None else {},
        created_at=now,
        updated_at=now,
    )
    db.add(product)
    _flush(db)
    return product_json(product, category)


def update_product(db: DbSession, product_id: int, changes: ProductChanges) -> dict[str, Any]:
    """Apply validated changes to an active product (PUT or PATCH); return its JSON."""
    product, category = _active_product(db, product_id, lock=True)
    if changes.category is not None:
        category = _resolve_category(db, changes.category)
        product.category_id = category.id
    if changes.sku is not None and changes.sku != product.sku:
        _check_sku_free(db, changes.sku, product.id)
    for field in ("sku", "name", "slug", "description", "price", "stock", "is_active", "attributes"):
        value = getattr(changes, field)
        if value is not None:
            setattr(product, field, value)
    product.updated_at = datetime.now(UTC)
    _flush(db)
    return product_json(product, category)


def delete_product(db: DbSession, product_id: int) -> None:
    """Soft delete: the product stays for past orders but leaves the catalog (404 from now on)."""
    product, _ = _active_product(db, product_id, lock=True)
    product.is_active = False
    product.updated_at = datetime.now(UTC)


def _flush(db: DbSession) -> None:
    try:
        db.flush()
    except IntegrityError as exc:
        # A concurrent writer took the sku between our check and the insert.
        raise duplicate_sku() from exc
