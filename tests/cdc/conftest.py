"""CDC fixtures: a source database with Django-style sample tables, and a running capture."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from cdc.capture import Capture, CaptureConfig
from cdc.events import ChangeEvent
from cdc.slot import create_slot, drop_slot, ensure_publication
from cdc.transport import Batch, MemoryTransport

SCHEMA = """
CREATE TABLE catalog_category (
    id serial PRIMARY KEY, name varchar(100) NOT NULL, slug varchar(100) UNIQUE NOT NULL,
    parent_id int NULL REFERENCES catalog_category);
CREATE TABLE catalog_product (
    id serial PRIMARY KEY, sku varchar(32) UNIQUE NOT NULL, name varchar(200) NOT NULL,
    slug varchar(200) NOT NULL, description text NOT NULL DEFAULT '', price numeric(10,2) NOT NULL,
    stock int NOT NULL DEFAULT 0, is_active bool NOT NULL DEFAULT true,
    category_id int NOT NULL REFERENCES catalog_category, attributes jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
ALTER TABLE catalog_product ALTER COLUMN description SET STORAGE EXTERNAL;
CREATE TABLE widgets (
    id bigint PRIMARY KEY, small int2, big int8, ratio float4, precise float8, flag bool,
    blob bytea, token uuid, born date, seen timestamp, at timestamptz, doc json, note text);
CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
CREATE TABLE logbook (line text);
INSERT INTO catalog_category (name, slug) VALUES ('Tools', 'tools'), ('Toys', 'toys');
"""


@dataclass
class SourceDB:
    """The legacy-side database of a test, with an autocommit connection."""

    url: str
    conn: psycopg2.extensions.connection
    slots: list[str] = field(default_factory=list)

    def execute(self, statement: str, params: Sequence[Any] | None = None) -> int:
        """Run a statement (autocommit); returns the number of rows it affected."""
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            return int(cur.rowcount)

    def query(self, statement: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())

    def scalar(self, statement: str, params: Sequence[Any] | None = None) -> Any:
        return self.query(statement, params)[0][0]

    def slot_name(self, suffix: str = "") -> str:
        name = f"t_{self.conn.info.dbname}"[:50] + suffix
        self.slots.append(name)
        return name


@pytest.fixture
def source(database: str) -> Iterator[SourceDB]:
    conn = psycopg2.connect(database)
    conn.autocommit = True
    db = SourceDB(database, conn)
    db.execute(SCHEMA)
    try:
        yield db
    finally:
        for slot in db.slots:
            drop_slot(database, slot, terminate=True)
        conn.close()


def insert_products(db: SourceDB, count: int, *, start: int = 1) -> None:
    db.execute(
        "INSERT INTO catalog_product (id, sku, name, slug, description, price, stock, category_id, "
        "attributes, created_at, updated_at) SELECT i, 'SKU-' || i, 'Product ' || i, 'product-' || i, "
        "'about ' || i, (i %% 1000) + 0.99, i %% 50, 1 + i %% 2, jsonb_build_object('n', i), "
        "'2024-01-01T00:00:00Z'::timestamptz + i * interval '1 second', now() "
        "FROM generate_series(%s, %s) AS i",
        (start, start + count - 1),
    )
    db.execute("SELECT setval('catalog_product_id_seq', (SELECT max(id) FROM catalog_product))")


@dataclass
class Collected:
    """Events drained from a transport by the test, acking each batch once seen."""

    transport: MemoryTransport
    events: list[ChangeEvent] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    auto_ack: bool = True

    def drain(self, until: Callable[[Collected], bool], *, timeout: float = 20.0, what: str = "events") -> None:
        deadline = time.monotonic() + timeout
        while not until(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {len(self.events)} events")
            for batch in self.transport.batches(0.05):
                self.events.extend(batch.events)
                self.batches.append(batch)
                if self.auto_ack:
                    batch.ack()
                if until(self):
                    return


@dataclass
class Running:
    capture: Capture
    transport: MemoryTransport
    collected: Collected
    slot: str
    publication: str
    consistent_point: int


@pytest.fixture
def start_capture(source: SourceDB) -> Iterator[Callable[..., Running]]:
    """Create publication and slot for `tables`, run a capture into a memory transport."""
    running: list[Running] = []

    def start(tables: Sequence[str], *, existing_slot: tuple[str, int] | None = None, **config: Any) -> Running:
        """`existing_slot`: (name, consistent point) of a slot the test created (and published)."""
        if existing_slot is None:
            slot = source.slot_name()
            ensure_publication(source.url, slot, tables)
            with create_slot(source.url, slot) as created:
                consistent_point = created.consistent_point
        else:
            slot, consistent_point = existing_slot
        transport = MemoryTransport(max_batches=config.pop("max_batches", 16))
        capture = Capture(CaptureConfig(dsn=source.url, slot=slot, publication=slot, read_timeout=0.2, **config), transport)
        capture.start()
        item = Running(capture, transport, Collected(transport), slot, slot, consistent_point)
        running.append(item)
        return item

    yield start
    for item in running:
        item.capture.stop()
        item.transport.close()
        item.capture.join(timeout=20)
        item.capture.close()
