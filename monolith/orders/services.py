"""Placing and listing orders. Placing one decrements `catalog_product.stock` in the same
transaction, under row locks: the coupling the catalog extraction has to live with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession

from monolith.catalog.models import Product
from monolith.exceptions import Conflict, ValidationError
from monolith.orders.models import Order, OrderItem
from monolith.web import iso, money

MAX_ITEMS = 100
MAX_QUANTITY = 10_000


@dataclass(frozen=True, kw_only=True)
class LineRequest:
    """One requested line of an order."""

    product_id: int
    quantity: int


def parse_items(data: Any) -> list[LineRequest]:
    """Validate `{"items": [{"product_id", "quantity"}, ...]}`; merge repeated products."""
    if not isinstance(data, dict):
        raise ValidationError({"non_field_errors": ["Invalid data. Expected a dictionary."]})
    items = data.get("items")
    if not isinstance(items, list) or not items:
        raise ValidationError({"items": ["Give a non-empty list of {\"product_id\", \"quantity\"} objects."]})
    if len(items) > MAX_ITEMS:
        raise ValidationError({"items": [f"Ensure this list has no more than {MAX_ITEMS} elements."]})
    merged: dict[int, int] = {}
    for index, item in enumerate(items):
        product_id = item.get("product_id") if isinstance(item, dict) else None
        quantity = item.get("quantity", 1) if isinstance(item, dict) else None
        if (
            not isinstance(product_id, int) or not isinstance(quantity, int)
            or not _positive_int(product_id) or not _positive_int(quantity) or quantity > MAX_QUANTITY
        ):
            raise ValidationError(
                {"items": [f"Item {index}: product_id and quantity must be integers, quantity 1..{MAX_QUANTITY}."]}
            )
        merged[product_id] = merged.get(product_id, 0) + quantity
    return [LineRequest(product_id=pid, quantity=qty) for pid, qty in merged.items()]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 2**31 - 1


def place_order(db: DbSession, user_id: int, lines: Sequence[LineRequest]) -> dict[str, Any]:
    """Create the order and its items and take the stock, all or nothing.

    Products are locked in id order so concurrent orders cannot deadlock.
    """
    wanted = {line.product_id: line.quantity for line in lines}
    products = {
        p.id: p
        for p in db.execute(
            select(Product).where(Product.id.in_(sorted(wanted))).order_by(Product.id).with_for_update()
        ).scalars()
    }
    for product_id in sorted(wanted):
        product = products.get(product_id)
        if product is None or not product.is_active:
            raise ValidationError({"items": [f"Unknown product {product_id}."]})
        if product.stock < wanted[product_id]:
            raise Conflict(f"Insufficient stock for product {product_id}.")
    now = datetime.now(UTC)
    total = sum((products[pid].price * qty for pid, qty in wanted.items()), Decimal("0"))
    order = Order(user_id=user_id, status="placed", total=total, created_at=now)
    db.add(order)
    db.flush()
    for product_id, quantity in wanted.items():
        product = products[product_id]
        product.stock -= quantity
        db.add(OrderItem(order_id=order.id, product_id=product_id, quantity=quantity, unit_price=product.price))
    db.flush()
    return _order_json(order, db.execute(select(OrderItem).where(OrderItem.order_id == order.id)).scalars())


def list_orders(db: DbSession, user_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """The user's latest orders, newest first, with their items."""
    orders = list(
        db.execute(
            select(Order).where(Order.user_id == user_id).order_by(Order.created_at.desc(), Order.id.desc()).limit(limit)
        ).scalars()
    )
    items: dict[int, list[OrderItem]] = {o.id: [] for o in orders}
    if orders:
        for item in db.execute(
            select(OrderItem).where(OrderItem.order_id.in_(list(items))).order_by(OrderItem.id)
        ).scalars():
            items[item.order_id].append(item)
    return [_order_json(o, items[o.id]) for o in orders]


def _order_json(order: Order, items: Any) -> dict[str, Any]:
    return {
        "id": order.id,
        "status": order.status,
        "total": money(order.total),
        "created_at": iso(order.created_at),
        "items": [
            {"product_id": i.product_id, "quantity": i.quantity, "unit_price": money(i.unit_price)} for i in items
        ],
    }
