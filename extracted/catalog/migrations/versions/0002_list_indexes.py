"""Indexes for the product list's orderings (price, name; id breaks ties).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_catalog_products_price_cents_id", "products", ["price_cents", "id"], schema="catalog")
    op.create_index("ix_catalog_products_title_id", "products", ["title", "id"], schema="catalog")


def downgrade() -> None:
    op.drop_index("ix_catalog_products_title_id", table_name="products", schema="catalog")
    op.drop_index("ix_catalog_products_price_cents_id", table_name="products", schema="catalog")
