"""`migrate` and `seed`: schema, sizes, determinism, realistic values."""

from __future__ import annotations

import dataclasses

import psycopg2
import pytest
from typer.testing import CliRunner

from monolith.__main__ import cli
from monolith.db import make_engine
from monolith.exceptions import MonolithError
from monolith.migrate import migrate
from monolith.seed import SeedSizes, seed
from common.postgres import EmbeddedPostgres
from tests.monolith.conftest import SMALL, scalar, seeded_database

TABLES = ["accounts_user", "catalog_category", "catalog_product", "django_session", "orders_order", "orders_orderitem"]
DIGEST = "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM catalog_product t"


def test_migrate_creates_tables_with_primary_keys_and_default_replica_identity(database: str) -> None:
    engine = make_engine(database)
    try:
        assert sorted(migrate(engine)) == TABLES
        assert sorted(migrate(engine)) == TABLES  # idempotent
    finally:
        engine.dispose()
    conn = psycopg2.connect(database)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.relname, c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1"
        )
        rows = cur.fetchall()
        cur.execute(
            "SELECT column_name, data_type, numeric_precision, numeric_scale FROM information_schema.columns "
            "WHERE table_name = 'catalog_product' AND column_name IN ('price', 'attributes', 'created_at') ORDER BY 1"
        )
        columns = cur.fetchall()
    conn.close()
    assert [(name, ident, pk) for name, ident, pk in rows] == [(t, "d", True) for t in TABLES]
    assert columns == [
        ("attributes", "jsonb", None, None),
        ("created_at", "timestamp with time zone", None, None),
        ("price", "numeric", 10, 2),
    ]


def test_seed_writes_the_requested_sizes(shop_db: str) -> None:
    database = shop_db
    assert scalar(database, "SELECT count(*) FROM catalog_product") == SMALL.products
    assert scalar(database, "SELECT count(*) FROM catalog_category") == SMALL.categories
    assert scalar(database, "SELECT count(*) FROM accounts_user") == SMALL.users + 1
    assert scalar(database, "SELECT count(*) FROM orders_order") == SMALL.orders
    assert scalar(database, "SELECT count(*) FROM orders_order o WHERE NOT EXISTS "
                            "(SELECT 1 FROM orders_orderitem i WHERE i.order_id = o.id)") == 0
    # Order totals are the sum of their lines.
    assert scalar(database, "SELECT count(*) FROM orders_order o WHERE total <> (SELECT sum(quantity * unit_price) "
                            "FROM orders_orderitem i WHERE i.order_id = o.id)") == 0
    assert scalar(database, "SELECT username FROM accounts_user WHERE is_staff") == "admin"
    assert scalar(database, "SELECT password FROM accounts_user WHERE username = 'user1'").startswith("pbkdf2_sha256$")
    # Sequences continue after the seeded ids.
    assert scalar(database, "SELECT (last_value, is_called)::text FROM catalog_product_id_seq") == (
        f"({SMALL.products + 1},f)"
    )


def test_seed_values_are_realistic(shop_db: str) -> None:
    database = shop_db
    assert scalar(database, "SELECT count(*) FROM catalog_product WHERE price <> trunc(price)") > 0
    assert scalar(database, "SELECT count(*) FROM catalog_product WHERE stock = 0") > 0
    assert scalar(database, "SELECT count(*) FROM catalog_product WHERE stock > 20") > 0
    assert scalar(database, "SELECT count(*) FROM catalog_product WHERE attributes <> '{}'") > 0
    assert scalar(database, "SELECT count(*) FROM catalog_product WHERE attributes = '{}'") > 0
    assert scalar(database, "SELECT count(*) FROM catalog_product WHERE NOT is_active") > 0
    assert scalar(database, "SELECT count(DISTINCT category_id) FROM catalog_product") == SMALL.categories
    assert scalar(database, "SELECT count(*) FROM catalog_category WHERE parent_id IS NOT NULL") > 0
    assert scalar(database, "SELECT min(price) > 0 FROM catalog_product") is True


def test_seed_is_deterministic_per_seed(pg: EmbeddedPostgres, shop_db: str, database: str) -> None:
    database, twin = shop_db, seeded_database(database)
    other = seeded_database(pg.create_database(twin.rsplit("/", 1)[1] + "_other"), dataclasses.replace(SMALL, seed=8))
    assert scalar(database, DIGEST) == scalar(twin, DIGEST)
    assert scalar(database, DIGEST) != scalar(other, DIGEST)


def test_seed_refuses_a_filled_database_unless_reset(database: str) -> None:
    seeded_database(database)
    engine = make_engine(database)
    try:
        with pytest.raises(MonolithError, match="--reset"):
            seed(engine, SMALL)
        report = seed(engine, SeedSizes(products=50, categories=3, users=2, orders=5), reset=True)
    finally:
        engine.dispose()
    assert report.rows["catalog_product"] == 50
    assert scalar(database, "SELECT count(*) FROM catalog_product") == 50
    # By default every seeded product is active, so every id 1..N answers.
    assert scalar(database, "SELECT bool_and(is_active) FROM catalog_product") is True


def test_cli_migrate_and_seed(database: str) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["migrate", "--database-url", database])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["seed", "--database-url", database, "--products", "120", "--orders", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert '"catalog_product": 120' in result.output
    assert scalar(database, "SELECT count(*) FROM orders_order") == 4


def test_cli_without_database_url_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRANGLER_MONOLITH_DATABASE_URL", raising=False)
    result = CliRunner().invoke(cli, ["migrate"])
    assert result.exit_code == 1
    assert "FAILED: no database URL" in result.output
    assert "STRANGLER_MONOLITH_DATABASE_URL" in result.output
    result = CliRunner().invoke(cli, ["seed", "--database-url", "not a url"])
    assert result.exit_code == 1
    assert "is not a database URL" in result.output


def test_cli_serve_refuses_a_database_without_the_shop_tables(database: str) -> None:
    result = CliRunner().invoke(cli, ["serve", "--database-url", database, "--port", "1"])
    assert result.exit_code == 1
    assert "run `python -m monolith migrate`" in result.output
