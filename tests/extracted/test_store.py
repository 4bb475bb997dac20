"""The catalog store: Alembic migrations and the one-off copy from the legacy tables."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest
from typer.testing import CliRunner

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from extracted.catalog.__main__ import cli
from extracted.catalog.copy import copy_from_legacy
from extracted.catalog.db import make_engine
from extracted.catalog.exceptions import CatalogError
from extracted.catalog.migrate import head_revision, migrate
from extracted.catalog.models import Base
from tests.extracted.conftest import SIZES
from tests.monolith.conftest import scalar

def _columns(url: str, table: str) -> list[tuple[str, str, str]]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'catalog' AND table_name = %s ORDER BY ordinal_position", (table,)
        )
        rows = cur.fetchall()
    conn.close()
    return rows


def test_upgrade_head_creates_the_store(database: str) -> None:
    assert migrate(database) == head_revision() == "0003"
    assert migrate(database) == "0003"  # idempotent
    assert scalar(database, "SELECT version_num FROM catalog.alembic_version") == "0003"
    assert [c[:2] for c in _columns(database, "products")] == [
        ("id", "bigint"), ("sku", "text"), ("title", "text"), ("slug", "text"), ("description", "text"),
        ("price_cents", "bigint"), ("stock", "integer"), ("active", "boolean"), ("category_id", "integer"),
        ("attributes", "jsonb"), ("created_at", "timestamp with time zone"), ("updated_at", "timestamp with time zone"),
    ]
    assert all(nullable == "NO" for _, _, nullable in _columns(database, "products"))
    assert [c[:2] for c in _columns(database, "categories")] == [
        ("id", "integer"), ("name", "text"), ("slug", "text"), ("parent_id", "integer"),
    ]
    # The models and the migrations describe the same store.
    engine = make_engine(database)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_schemas": True, "version_table_schema": "catalog"})
            assert [d for d in compare_metadata(context, Base.metadata) if d[0] != "remove_table"] == []
    finally:
        engine.dispose()
    # No foreign key: CDC applies tables independently.
    assert scalar(database, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                            "AND connamespace = 'catalog'::regnamespace") == 0


def test_migrate_command_works_from_any_directory(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["migrate", "--database-url", database])
    assert result.exit_code == 0, result.output
    assert "revision 0003" in result.output
    assert scalar(database, "SELECT to_regclass('catalog.products') IS NOT NULL") is True


def test_copy_from_legacy_translates_every_row(legacy_db: str, database: str) -> None:
    legacy = legacy_db
    migrate(database)
    report = copy_from_legacy(legacy, database, chunk_rows=64)
    assert report.rows == {"categories": SIZES.categories, "products": SIZES.products}
    legacy_rows = _rows(legacy, "SELECT id, sku, name, slug, description, (price * 100)::bigint, stock, is_active, "
                                "category_id, attributes::text, created_at FROM catalog_product ORDER BY id")
    store_rows = _rows(database, "SELECT id, sku, title, slug, description, price_cents, stock, active, category_id, "
                                 "attributes::text, created_at FROM catalog.products ORDER BY id")
    assert store_rows == legacy_rows
    assert _rows(database, "SELECT * FROM catalog.categories ORDER BY id") == _rows(
        legacy, "SELECT id, name, slug, parent_id FROM catalog_category ORDER BY id")
    # Re-running replaces instead of duplicating.
    assert copy_from_legacy(legacy, database).rows == {"categories": SIZES.categories, "products": SIZES.products}
    assert scalar(database, "SELECT count(*) FROM catalog.products") == SIZES.products


def test_copy_into_an_unmigrated_store_says_what_to_run(legacy_db: str, database: str) -> None:
    with pytest.raises(CatalogError, match="python -m extracted.catalog migrate"):
        copy_from_legacy(legacy_db, database)


def test_cli_reports_missing_settings() -> None:
    result = CliRunner().invoke(cli, ["copy-from-legacy", "--database-url", "postgresql://x@127.0.0.1:1/x"],
                                env={"STRANGLER_MONOLITH_DATABASE_URL": ""})
    assert result.exit_code == 1
    assert "FAILED: no --legacy-url" in result.output


def _rows(url: str, statement: str) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(statement)
        rows = cur.fetchall()
    conn.close()
    return rows
