"""`python -m monolith migrate`: create the legacy tables (idempotent, like a first `manage.py migrate`)."""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

import monolith.accounts.models  # noqa: F401  (registers the tables on the shared metadata)
import monolith.catalog.models  # noqa: F401
import monolith.orders.models  # noqa: F401
from monolith.db import Base
from monolith.exceptions import MonolithError


def migrate(engine: Engine) -> list[str]:
    """Create every missing table; return the table names. Existing tables are left as they are."""
    try:
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                # CDC decodes updates and deletes by primary key: the default identity is what it needs.
                conn.execute(text(f'ALTER TABLE "{table.name}" REPLICA IDENTITY DEFAULT'))
    except OperationalError as exc:
        raise MonolithError(f"cannot create the monolith's tables at {engine.url!r}: {exc.orig}") from exc
    return [table.name for table in Base.metadata.sorted_tables]
