"""Fixtures and helpers of the apply-side and pipeline CDC tests (imported by their modules)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from cdc.capture import Capture, CaptureConfig
from cdc.events import ChangeEvent, Source
from cdc.pgoutput import RelationColumn
from cdc.pipeline import RunStats, run
from cdc.spec import SyncSpec, load_spec
from cdc.textrow import RowLayout, TextRow
from cdc.transport import MemoryTransport
from tests.cdc.pgoutput_encoder import pg_text
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
SYNC_YAML = ROOT / "extracted" / "catalog" / "sync.yaml"

LEGACY_DDL = """
CREATE TABLE catalog_category (id serial PRIMARY KEY, name varchar(100) NOT NULL,
  slug varchar(100) UNIQUE NOT NULL, parent_id int NULL REFERENCES catalog_category);
CREATE TABLE catalog_product (id serial PRIMARY KEY, sku varchar(32) UNIQUE NOT NULL,
  name varchar(200) NOT NULL, slug varchar(200) NOT NULL, description text NOT NULL DEFAULT '',
  price numeric(10,2) NOT NULL, stock int NOT NULL DEFAULT 0, is_active bool NOT NULL DEFAULT true,
  category_id int NOT NULL REFERENCES catalog_category, attributes jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
"""

CATALOG_DDL = """
CREATE SCHEMA IF NOT EXISTS catalog;
CREATE TABLE catalog.categories (id int PRIMARY KEY, name text NOT NULL, slug text UNIQUE NOT NULL, parent_id int NULL);
CREATE TABLE catalog.products (id bigint PRIMARY KEY, sku text UNIQUE NOT NULL, title text NOT NULL,
  slug text NOT NULL, description text NOT NULL, price_cents bigint NOT NULL, stock int NOT NULL,
  active bool NOT NULL, category_id int NOT NULL, attributes jsonb NOT NULL,
  created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
"""

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def execute(url: str, sql: str, params: Any = None) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
    finally:
        conn.close()


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def wal_position(url: str) -> int:
    """The server's current WAL position, as a number."""
    return int(query(url, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")[0][0])


def checkpoint_of(target: str, spec: SyncSpec) -> tuple[int, int]:
    """(applied commit LSN, source time in ms) of the spec's checkpoint in the target."""
    [(lsn, ms)] = query(target, "SELECT commit_lsn, source_ts_ms FROM strangler.checkpoint WHERE name = %s", (spec.name,))
    return int(lsn), int(ms)


def create_catalog_store(url: str) -> None:
    """The catalog service's schema: its Alembic migration when present, else the same DDL."""
    if not (ROOT / "extracted" / "catalog" / "migrations" / "env.py").exists():
        execute(url, CATALOG_DDL)
        return
    proc = subprocess.run(
        [sys.executable, "-m", "extracted.catalog", "migrate", "--database-url", url],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    if proc.returncode != 0:
        raise AssertionError(f"catalog migrate failed: {proc.stderr}")


def seed(legacy: str, n: int, start: int = 1) -> None:
    """Products `start` .. `start + n - 1` (and category 1) in the legacy database."""
    execute(legacy, "INSERT INTO catalog_category (id, name, slug) VALUES (1, 'Tools', 'tools') ON CONFLICT DO NOTHING")
    execute(
        legacy,
        "INSERT INTO catalog_product (id, sku, name, slug, description, price, stock, is_active, category_id, attributes,"
        " created_at, updated_at) SELECT g, 'SKU-' || g, 'Product ' || g, 'product-' || g, repeat('x', 50), (g %% 1000) + 0.99,"
        " g %% 7, g %% 5 <> 0, 1, jsonb_build_object('n', g), %s, %s FROM generate_series(%s, %s) g",
        (T0, T0, start, start + n - 1),
    )


@dataclass
class Background:
    """A `cdc run` in a thread of the test."""

    thread: threading.Thread
    stop: threading.Event = field(default_factory=threading.Event)
    stats: list[RunStats] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    def failure(self, timeout: float = 30.0) -> BaseException:
        """The error the run stopped with (it must stop by itself within `timeout`)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the run did not stop within {timeout}s"
        assert self.errors, "the run stopped without an error"
        return self.errors.pop()


@contextmanager
def running(spec: SyncSpec, **kw: Any) -> Iterator[Background]:
    def target() -> None:
        try:
            bg.stats.append(run(spec, stop=bg.stop, heartbeat_interval=0.5, **{"chunk_rows": 300, **kw}))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            bg.errors.append(exc)

    bg = Background(threading.Thread(target=target, daemon=True))
    bg.thread.start()
    try:
        yield bg
    finally:
        bg.stop.set()
        bg.thread.join(30)
        assert not bg.thread.is_alive()
        if bg.errors:
            raise bg.errors[0]


def create_legacy(url: str) -> None:
    execute(url, LEGACY_DDL)


_TEMPLATES: dict[str, str] = {}


def _from_template(pg: Any, name: str, kind: str) -> str:
    """A new database copied from a template made once per session (migrating is slow)."""
    template = f"strangler_tpl_{kind}"
    if kind not in _TEMPLATES:
        url = pg.create_database(template)
        (create_legacy if kind == "legacy" else create_catalog_store)(url)
        _TEMPLATES[kind] = url
    conn = psycopg2.connect(pg.url())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        conn.close()
    return str(pg.url(name))


@pytest.fixture
def legacy_and_target(pg: Any, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    import re
    import uuid

    from cdc.slot import drop_slot

    base = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:30] + "_" + uuid.uuid4().hex[:6]
    urls = _from_template(pg, base + "_l", "legacy"), _from_template(pg, base + "_t", "catalog")
    yield urls
    # Slot names are the cluster's (strangler_catalog): leave none for the next test to find.
    for url in urls:
        for (slot,) in query(url, "SELECT slot_name::text FROM pg_replication_slots WHERE database = current_database()"):
            drop_slot(url, slot, terminate=True)


def spec_for(legacy: str | None, target: str | None, **env: str) -> SyncSpec:
    spec = load_spec(SYNC_YAML, env={})
    return spec.with_urls(source_url=legacy, target_url=target)


def source(table: str = "catalog_product", lsn: int = 100, commit_lsn: int | None = None, snapshot: str = "false") -> Source:
    return Source(
        name="legacy", db="legacy", schema="public", table=table, lsn=lsn,
        commit_lsn=commit_lsn if commit_lsn is not None else lsn, tx_id=1, ts_ms=1_700_000_000_000, snapshot=snapshot,
    )


def product(pid: int, **changes: Any) -> dict[str, Any]:
    row = {
        "id": pid, "sku": f"SKU-{pid}", "name": f"Product {pid}", "slug": f"product-{pid}",
        "description": "d" * 10, "price": Decimal("19.99"), "stock": 5, "is_active": True,
        "category_id": 1, "attributes": {"color": "red"}, "created_at": T0, "updated_at": T0,
    }
    row.update(changes)
    return row


def event(op: str, pid: int, lsn: int, *, before: Mapping[str, Any] | None = None, after: Mapping[str, Any] | None = None,
          table: str = "catalog_product") -> ChangeEvent:
    snapshot = "true" if op == "r" else "false"
    return ChangeEvent(
        op=op, source=source(table, lsn=0 if op == "r" else lsn, commit_lsn=lsn, snapshot=snapshot),
        key={"id": pid} if op != "t" else None, before=before, after=after, ts_ms=1_700_000_000_000,
    )


LEGACY_PRODUCT = (("id", "int4", 23), ("sku", "varchar", 1043), ("name", "varchar", 1043), ("slug", "varchar", 1043),
                  ("description", "text", 25), ("price", "numeric", 1700), ("stock", "int4", 23),
                  ("is_active", "bool", 16), ("category_id", "int4", 23), ("attributes", "jsonb", 3802),
                  ("created_at", "timestamptz", 1184), ("updated_at", "timestamptz", 1184))
LAYOUT = RowLayout(tuple(RelationColumn(0, name, oid, -1) for name, _, oid in LEGACY_PRODUCT))


def text_row(row: dict[str, object]) -> TextRow:
    """A legacy row as our capture hands it on: the server's text output of each value."""
    return TextRow(LAYOUT, tuple(pg_text(type_name, row[name]) for name, type_name, _ in LEGACY_PRODUCT))


def collect_events(spec: SyncSpec, until: int) -> list[ChangeEvent]:
    """Events of the slot from its confirmed position, read without acknowledging any."""
    transport = MemoryTransport()
    capture = Capture(CaptureConfig(dsn=spec.source_url or "", slot=spec.slot_name, publication=spec.publication_name,
                                    read_timeout=0.2), transport)
    capture.start()
    events: list[ChangeEvent] = []
    try:
        def enough() -> bool:
            for batch in transport.batches(0.05):
                events.extend(batch.events)
                if len(events) >= until:
                    return True
            return len(events) >= until

        wait_for(enough, timeout=20, what=f"{until} events from the slot")
    finally:
        capture.stop()
        transport.close()
        capture.join(timeout=20)
        capture.close()
    return events
