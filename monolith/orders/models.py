"""Orders and their lines, with Django's table names (`orders_order`, `orders_orderitem`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import DateTime, ForeignKey, Integer, Numeric, String
from sqlalchemy.orm import Mapped, mapped_column

from monolith.db import Base


class Order(Base):
    """An order placed by a user; `total` is the sum of its items at the prices of the day."""

    __tablename__ = "orders_order"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("accounts_user.id"), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    total: Mapped[Decimal] = mapped_column(Numeric(12, 2), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class OrderItem(Base):
    """One line of an order: a product, a quantity and the unit price paid."""

    __tablename__ = "orders_orderitem"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders_order.id"), nullable=False, index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("catalog_product.id"), nullable=False, index=True)
    quantity: Mapped[int] = mapped_column(Integer, nullable=False)
    unit_price: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
