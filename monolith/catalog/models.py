"""Categories and products, with Django's table names (`catalog_category`, `catalog_product`)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, Numeric, String, Text, text, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from monolith.db import Base


class Category(Base):
    """A product category; categories form a tree through `parent_id`."""

    __tablename__ = "catalog_category"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    slug: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("catalog_category.id"), nullable=True, index=True)


class Product(Base):
    """A product for sale; `stock` is decremented by orders in the same transaction."""

    __tablename__ = "catalog_product"
    # The list's orderings (price, name; id breaks ties) would otherwise sort the whole table.
    __table_args__ = (
        Index("catalog_product_price_id_idx", "price", "id"),
        Index("catalog_product_name_id_idx", "name", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(32), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    slug: Mapped[str] = mapped_column(String(200), nullable=False, index=True)
    description: Mapped[str] = mapped_column(Text, nullable=False, server_default="", default="")
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2), nullable=False)
    stock: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0", default=0)
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=true(), default=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("catalog_category.id"), nullable=False, index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb"), default=dict
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
