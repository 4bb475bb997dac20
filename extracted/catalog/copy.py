"""`copy-from-legacy`: a one-off bulk copy of the monolith's catalog tables into the store.

Used until CDC fills the store. Reads one consistent snapshot of the legacy tables (REPEATABLE
READ), translates in SQL (price → price_cents, name → title, is_active → active) and moves rows
with COPY in primary-key chunks, so memory stays bounded by one chunk whatever the table size.
The store's tables are emptied first, in the same transaction: re-running it is safe.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extensions
from sqlalchemy.engine import make_url

from extracted.catalog.db import check_url
from extracted.catalog.exceptions import CatalogError

Progress = Callable[[str, int, int], None]  # table, rows copied so far, rows in all

CATEGORY_SELECT = "SELECT id, name, slug, parent_id FROM catalog_category ORDER BY id"
PRODUCT_SELECT = (
    "SELECT id, sku, name, slug, description, (price * 100)::bigint, stock, is_active, category_id, "
    "attributes, created_at, updated_at FROM catalog_product WHERE id > {low} AND id <= {high} ORDER BY id"
)
PRODUCT_COLUMNS = (
    "id, sku, title, slug, description, price_cents, stock, active, category_id, attributes, created_at, updated_at"
)


@dataclass(kw_only=True)
class CopyReport:
    """Rows copied per store table and the time it took."""

    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _libpq_url(database_url: str) -> str:
    # psycopg2 takes libpq URLs only: drop SQLAlchemy's "+driver" suffix.
    return make_url(check_url(database_url)).set(drivername="postgresql").render_as_string(hide_password=False)


def copy_from_legacy(
    legacy_url: str, database_url: str, *, chunk_rows: int = 20_000, progress: Progress | None = None
) -> CopyReport:
    """Replace the store's categories and products with the legacy ones; return what was copied."""
    if chunk_rows < 1:
        raise CatalogError(f"chunk size {chunk_rows} must be at least 1")
    started = time.perf_counter()
    report = CopyReport()
    try:
        legacy = psycopg2.connect(_libpq_url(legacy_url))
    except psycopg2.Error as exc:
        raise CatalogError(f"cannot connect to the legacy database {legacy_url}: {exc}") from exc
    try:
        target = psycopg2.connect(_libpq_url(database_url))
    except psycopg2.Error as exc:
        legacy.close()
        raise CatalogError(f"cannot connect to the catalog store {database_url}: {exc}") from exc
    try:
        legacy.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
        source, sink = legacy.cursor(), target.cursor()
        sink.execute("TRUNCATE catalog.products, catalog.categories")
        report.rows["categories"] = _copy(source, sink, f"COPY ({CATEGORY_SELECT}) TO STDOUT",
                                          "COPY catalog.categories (id, name, slug, parent_id) FROM STDIN")
        source.execute("SELECT coalesce(min(id), 1) - 1, coalesce(max(id), 0), count(*) FROM catalog_product")
        low, high, total = source.fetchone()
        copied = 0
        for start in range(low, high, chunk_rows):
            copied += _copy(
                source, sink,
                f"COPY ({PRODUCT_SELECT.format(low=start, high=start + chunk_rows)}) TO STDOUT",
                f"COPY catalog.products ({PRODUCT_COLUMNS}) FROM STDIN",
            )
            if progress:
                progress("products", copied, total)
        report.rows["products"] = copied
        target.commit()
        legacy.rollback()
        sink.execute("ANALYZE catalog.products, catalog.categories")
        target.commit()
    except (psycopg2.errors.UndefinedTable, psycopg2.errors.InvalidSchemaName) as exc:
        target.rollback()
        raise CatalogError(
            f"a table is missing ({exc.pgerror.strip() if exc.pgerror else exc}): run "
            "`python -m extracted.catalog migrate` on the store and `python -m monolith migrate` on the legacy database"
        ) from exc
    except psycopg2.Error as exc:
        target.rollback()
        raise CatalogError(f"copying the catalog from the legacy database failed: {exc}") from exc
    finally:
        legacy.close()
        target.close()
    report.seconds = time.perf_counter() - started
    return report


def _copy(source: psycopg2.extensions.cursor, sink: psycopg2.extensions.cursor, out_sql: str, in_sql: str) -> int:
    buffer = io.BytesIO()
    source.copy_expert(out_sql, buffer)
    rows = buffer.getvalue().count(b"\n")
    buffer.seek(0)
    sink.copy_expert(in_sql, buffer)
    return rows
