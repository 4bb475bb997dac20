"""catalog.products keeps whole old rows in the WAL (REPLICA IDENTITY FULL).

After the write switch the reverse stream writes only the service-owned columns of a product into
the legacy table and records a service change to a legacy-owned one (stock) as a conflict. With
the old row in each update it can tell what this update changed; without it, a stale copy of
`stock` in an update of the title would look like a change of stock.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE catalog.products REPLICA IDENTITY FULL")


def downgrade() -> None:
    op.execute("ALTER TABLE catalog.products REPLICA IDENTITY DEFAULT")
