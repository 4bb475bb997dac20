"""`cdc check` on real PostgreSQL clusters set up to fail each precondition, and `cdc run` failing fast."""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cdc.pipeline import run
from cdc.preflight import PreflightError, preflight
from common.postgres import EmbeddedPostgres
from scripts.cli import app
from tests.cdc.apply_fixtures import CATALOG_DDL, LEGACY_DDL, SYNC_YAML, execute, legacy_and_target, query, spec_for

__all__ = ["legacy_and_target"]

runner = CliRunner()


def _check(legacy: str, target: str, *extra: str) -> Any:
    return runner.invoke(app, ["cdc", "check", "--spec", str(SYNC_YAML), "--source-url", legacy, "--target-url", target,
                               "--wal-sample", "0.1", *extra])


@pytest.fixture(scope="module")
def tight() -> Iterator[EmbeddedPostgres]:
    """A second private cluster without logical decoding and with only two replication slots."""
    data = Path(tempfile.mkdtemp(prefix="strangler-test-pg-tight-")) / "data"
    server = EmbeddedPostgres(data, ephemeral=True,
                              settings={"wal_level": "replica", "max_replication_slots": "2", "max_wal_senders": "2"})
    server.start()
    try:
        yield server
    finally:
        server.stop()
        data.parent.rmdir()


@pytest.fixture
def tight_pair(tight: EmbeddedPostgres) -> tuple[str, str]:
    name = "p" + uuid.uuid4().hex[:8]
    legacy, target = tight.create_database(name + "_l"), tight.create_database(name + "_t")
    execute(legacy, LEGACY_DDL)
    execute(target, CATALOG_DDL)
    return legacy, target


def test_a_ready_source_passes_every_check(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    result = _check(legacy, target)
    assert result.exit_code == 0, result.output
    for name in ("wal_level", "replication slots", "WAL senders", "REPLICATION privilege", "SELECT privilege",
                 "CREATE PUBLICATION", "primary keys", "filters", "target schema", "columns", "WAL headroom"):
        assert f"✓ {name}:" in result.output, result.output
    assert "0 failed" in result.output
    report = json.loads(_check(legacy, target, "--json").output)
    assert report["ok"] is True and report["failures"] == 0
    # Nothing was created on the source.
    assert query(legacy, "SELECT count(*) FROM pg_publication")[0][0] == 0
    assert query(legacy, "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()")[0][0] == 0


def test_wal_level_replica_is_caught_with_the_setting_to_change(tight_pair: tuple[str, str]) -> None:
    legacy, target = tight_pair
    result = _check(legacy, target)
    assert result.exit_code == 1, result.output
    assert "✗ wal_level: wal_level is 'replica', logical replication needs 'logical'" in result.output
    assert "fix: run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL" in result.output
    with pytest.raises(PreflightError, match=r"\(1\) wal_level: wal_level is 'replica'.*ALTER SYSTEM SET wal_level = logical"):
        run(spec_for(legacy, target), until_caught_up=True)


def test_full_replication_slots_are_caught_with_the_slot_to_drop(tight_pair: tuple[str, str]) -> None:
    legacy, target = tight_pair
    names = [f"held_{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name in names:
        execute(legacy, "SELECT pg_create_physical_replication_slot(%s)", (name,))
    try:
        checks = {c.name: c for c in preflight(spec_for(legacy, target), wal_sample_seconds=0.1).checks}
        slots = checks["replication slots"]
        assert slots.status == "fail"
        assert slots.message.startswith("all 2 replication slots are in use"), slots.message
        assert f"SELECT pg_drop_replication_slot('{sorted(names)[0]}')" in (slots.fix or "")
        assert "ALTER SYSTEM SET max_replication_slots = 3;" in (slots.fix or "")
    finally:
        for name in names:
            execute(legacy, "SELECT pg_drop_replication_slot(%s)", (name,))


def test_a_table_without_primary_key_is_caught_and_cdc_run_stops_first(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    execute(legacy, "ALTER TABLE catalog_category DROP CONSTRAINT catalog_category_pkey CASCADE")
    result = _check(legacy, target)
    assert result.exit_code == 1
    assert "✗ primary keys: public.catalog_category has no primary key or replica identity full" in result.output
    assert "ALTER TABLE public.catalog_category REPLICA IDENTITY FULL;" in result.output
    with pytest.raises(PreflightError, match=r"primary keys: public.catalog_category has no primary key.*ADD PRIMARY KEY"):
        run(spec_for(legacy, target), until_caught_up=True)
    # Failing fast: no publication, no slot, no checkpoint schema.
    assert query(legacy, "SELECT count(*) FROM pg_publication")[0][0] == 0
    assert query(legacy, "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()")[0][0] == 0


def test_a_role_without_replication_or_grants_is_caught(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    role = f"reader_{uuid.uuid4().hex[:6]}"
    execute(legacy, f'CREATE ROLE "{role}" LOGIN')
    try:
        as_role = legacy.replace("://postgres@", f"://{role}@")
        checks = {c.name: c for c in preflight(spec_for(as_role, target), wal_sample_seconds=0.1).checks}
        assert checks["REPLICATION privilege"].status == "fail"
        assert checks["REPLICATION privilege"].fix == f'run ALTER ROLE "{role}" REPLICATION;'
        assert checks["SELECT privilege"].status == "fail"
        assert checks["SELECT privilege"].fix == \
            f'run GRANT SELECT ON public.catalog_category, public.catalog_product TO "{role}";'
        assert checks["CREATE PUBLICATION"].status == "fail"
        assert f'ALTER TABLE public.catalog_product OWNER TO "{role}";' in (checks["CREATE PUBLICATION"].fix or "")
        execute(legacy, f'ALTER ROLE "{role}" REPLICATION')
        execute(legacy, f'GRANT SELECT ON catalog_category, catalog_product TO "{role}"')
        checks = {c.name: c for c in preflight(spec_for(as_role, target), wal_sample_seconds=0.1).checks}
        assert checks["REPLICATION privilege"].status == "ok" and checks["SELECT privilege"].status == "ok"
    finally:
        execute(legacy, f'DROP OWNED BY "{role}"')
        execute(legacy, f'DROP ROLE "{role}"')


def test_an_unmigrated_target_and_a_retyped_column_are_caught(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    execute(legacy, "ALTER TABLE catalog_product ALTER COLUMN price TYPE text")
    checks = {c.name: c for c in preflight(spec_for(legacy, target), wal_sample_seconds=0.1).checks}
    assert checks["columns"].status == "fail"
    assert "price is text (a string), which cannot fill catalog.products.price_cents (int8) through cents" \
        in checks["columns"].message
    execute(target, "DROP TABLE catalog.products")
    checks = {c.name: c for c in preflight(spec_for(legacy, target), wal_sample_seconds=0.1).checks}
    assert checks["target schema"].status == "fail"
    assert checks["target schema"].message == "target table catalog.products does not exist (schema not migrated)"
    assert "python -m extracted.catalog migrate" in (checks["target schema"].fix or "")
