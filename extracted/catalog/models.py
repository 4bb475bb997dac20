"""The catalog service's own store: schema `catalog`, prices in integer cents, its own names.

No foreign key from products to categories: CDC applies each table independently, in any order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Index, Integer, MetaData, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "catalog"


class Base(DeclarativeBase):
    """Declarative base of the catalog store (every table in schema `catalog`)."""

    metadata = MetaData(schema=SCHEMA)


class Category(Base):
    """A category (legacy `catalog_category`)."""

    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    slug: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    parent_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Product(Base):
    """A product (legacy `catalog_product`: name → title, price → price_cents, is_active → active)."""

    __tablename__ = "products"
    __table_args__ = (
        Index("ix_catalog_products_price_cents_id", "price_cents", "id"),
        Index("ix_catalog_products_title_id", "title", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    sku: Mapped[str] = mapped_column(Text, unique=True, nullable=False)
    title: Mapped[str] = mapped_column(Text, nullable=False)
    slug: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    price_cents: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stock: Mapped[int] = mapped_column(Integer, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False)
    category_id: Mapped[int] = mapped_column(Integer, nullable=False, index=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
