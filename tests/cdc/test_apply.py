"""Idempotent apply into a real PostgreSQL target: upserts, deletes, truncates, key changes,
TOAST placeholders, redelivery, dead letters and schema changes."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import replace
from decimal import Decimal

import pytest

from cdc.apply import Applier, ApplyError
from cdc.events import UNAVAILABLE, ChangeEvent, Column
from cdc.exceptions import SchemaChangedError
from cdc.mapping import RowMapper
from tests.cdc.apply_fixtures import event, execute, legacy_and_target, product, query, spec_for, text_row

__all__ = ["legacy_and_target"]


def _applier(target: str, **kw: object) -> Applier:
    return Applier(spec_for(None, target), **kw).open()  # type: ignore[arg-type]


def _products(target: str) -> list[tuple[object, ...]]:
    return query(target, "SELECT id, title, price_cents, description, active FROM catalog.products ORDER BY id")


@pytest.mark.parametrize("count", [3, 100], ids=["values", "copy"])
def test_text_rows_land_as_the_same_values(legacy_and_target: tuple[str, str], count: int) -> None:
    # Copied columns go in as the server's text; escapes, an offset other than UTC and JSON included.
    _, target = legacy_and_target
    zoned = dt.datetime(2024, 5, 1, 14, 30, 0, 250, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    rows = [product(i, description=f"tab\there\nnew\\line {i}", created_at=zoned,
                    attributes={"n": i, "q": "a\"b\tc"}) for i in range(1, count + 1)]
    with _applier(target) as applier:
        applier.apply([event("c", r["id"], 100 + r["id"], after=text_row(r)) for r in rows])
    got = query(target, "SELECT id, title, price_cents, description, active, attributes, created_at, updated_at "
                        "FROM catalog.products ORDER BY id")
    assert got == [(r["id"], r["name"], 1999, r["description"], True, r["attributes"], zoned, r["updated_at"]) for r in rows]


def test_insert_update_delete_and_checkpoint(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    applier = _applier(target)
    try:
        applier.apply([
            event("c", 1, 100, after=product(1)),
            event("c", 2, 110, after=product(2)),
            event("u", 1, 120, before={"id": 1}, after=product(1, name="Renamed", price=Decimal("5.00"))),
            event("d", 2, 130, before={"id": 2}),
        ])
        assert _products(target) == [(1, "Renamed", 500, "dddddddddd", True)]
        assert query(target, "SELECT commit_lsn, lsn FROM strangler.checkpoint WHERE name = 'catalog'") == [(130, 130)]
    finally:
        applier.close()


def test_redelivered_and_older_events_are_no_ops(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    batch = [event("c", 1, 100, after=product(1)), event("u", 1, 200, before={"id": 1}, after=product(1, name="new"))]
    with _applier(target, ordered=False) as applier:
        applier.apply(batch)
        result = applier.apply(batch)  # redelivered as a whole
        assert result.applied == 0
        applier.apply([event("u", 1, 150, before={"id": 1}, after=product(1, name="older"))])
        assert _products(target)[0][1] == "new"
        # A late insert older than the delete does not resurrect the row.
        applier.apply([event("d", 1, 300, before={"id": 1})])
        applier.apply([event("c", 1, 250, after=product(1))])
        assert _products(target) == []
    with _applier(target) as ordered:  # the checkpoint alone skips what it covers
        assert ordered.apply([event("c", 9, 300, after=product(9))]).skipped == 1


def test_snapshot_rows_never_override_streamed_changes(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    with _applier(target, ordered=False) as applier:
        applier.apply([event("u", 1, 500, before={"id": 1}, after=product(1, name="streamed"))])
        applier.apply([event("r", 1, 400, after=product(1, name="snapshot")), event("r", 2, 400, after=product(2))])
        assert [r[1] for r in _products(target)] == ["streamed", "Product 2"]


def test_primary_key_change_moves_the_row(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    with _applier(target) as applier:
        applier.apply([event("c", 1, 100, after=product(1))])
        applier.apply([event("u", 7, 200, before={"id": 1}, after=product(7))])
        assert [r[0] for r in _products(target)] == [7]


def test_truncate_and_filtered_rows(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    with _applier(target) as applier:
        applier.apply([event("c", 1, 100, after=product(1)), event("c", 2, 110, after=product(2))])
        truncate = replace(event("c", 0, 120), op="t", key=None, after=None)
        applier.apply([truncate, event("c", 3, 130, after=product(3))])
        assert [r[0] for r in _products(target)] == [3]
        # A row updated into the filter's excluded set leaves the service table.
        applier.apply([event("u", 3, 140, before={"id": 3}, after=product(3, sku="__internal-3"))])
        assert _products(target) == []


def test_unchanged_toast_value_keeps_the_target_value(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    with _applier(target) as applier:
        applier.apply([event("c", 1, 100, after=product(1, description="long text"))])
        applier.apply([event("u", 1, 200, before={"id": 1}, after=product(1, description=UNAVAILABLE, stock=9))])
        assert query(target, "SELECT description, stock FROM catalog.products") == [("long text", 9)]
        # Without an existing row such an event cannot be applied: dead letter, stream goes on.
        result = applier.apply([
            event("u", 2, 300, before={"id": 2}, after=product(2, description=UNAVAILABLE)),
            event("c", 3, 310, after=product(3)),
        ])
        assert result.dead_lettered == 1
        assert [r[0] for r in _products(target)] == [1, 3]
        assert "unchanged TOAST" in query(target, "SELECT reason FROM strangler.dead_letter")[0][0]


def test_poison_events_are_dead_lettered_and_the_stream_continues(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    with _applier(target) as applier:
        result = applier.apply([
            event("c", 1, 100, after=product(1)),
            event("c", 2, 110, after=product(2, price="not-a-number")),        # unmappable
            event("c", 3, 120, after=product(3, sku="SKU-1")),                  # unique violation on sku
            event("c", 4, 130, after=product(4)),
        ])
        assert result.dead_lettered == 2
        assert [r[0] for r in _products(target)] == [1, 4]
        rows = query(target, "SELECT reason, event->'after'->>'id', position FROM strangler.dead_letter ORDER BY id")
        assert {r[1] for r in rows} == {"2", "3"}
        assert any("UniqueViolation" in r[0] for r in rows) and any("is neither a number" in r[0] for r in rows)
        assert query(target, "SELECT lsn FROM strangler.checkpoint") == [(130,)]


def test_on_error_stop_rolls_back_and_raises(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    spec = replace(spec_for(None, target), on_error="stop")
    with Applier(spec).open() as applier:
        with pytest.raises(ApplyError, match="on_error: stop"):
            applier.apply([event("c", 1, 100, after=product(1)), event("c", 2, 110, after=product(2, price="x"))])
        assert _products(target) == []
        assert query(target, "SELECT count(*) FROM strangler.checkpoint") == [(0,)]


def test_dropped_or_retyped_mapped_column_stops_and_new_columns_are_ignored(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    cols = tuple(Column(n, "numeric" if n == "price" else "text") for n in product(1))
    with _applier(target) as applier:
        applier.apply([replace(event("c", 1, 100, after=product(1)), columns=cols)])
        extra = (*cols, Column("colour", "text"))
        applier.apply([replace(event("c", 2, 110, after={**product(2), "colour": "red"}), columns=extra)])
        assert len(_products(target)) == 2
        retyped = tuple(Column(c.name, "text") for c in cols)
        with pytest.raises(SchemaChangedError, match="price changed type from numeric to text"):
            applier.apply([replace(event("c", 3, 120, after=product(3)), columns=retyped)])
        dropped = tuple(c for c in cols if c.name != "stock")
        row = product(4)
        del row["stock"]
        with pytest.raises(SchemaChangedError, match="stock"):
            applier.apply([replace(event("c", 4, 130, after=row), columns=dropped)])
        assert len(_products(target)) == 2


def test_applier_writes_carry_the_replication_origin(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    with _applier(target) as applier:
        applier.apply([event("c", 1, 100, after=product(1))])
        assert query(target, "SELECT count(*) FROM pg_replication_origin WHERE roname = 'strangler_catalog'") == [(1,)]
        with pytest.raises(ApplyError, match="in use"):
            Applier(spec_for(None, target)).open(origin_wait=0.3)


def test_snapshot_copy_fast_path_and_resumed_chunk(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    spec = spec_for(None, target)
    table = spec.tables[1]
    mapper = RowMapper(table)
    with Applier(spec).open() as applier:
        rows = [mapper.map(product(i, description="tab\there\nnew \\ line")) for i in range(1, 6)]
        applier.copy_rows(table, rows, snapshot={"done": False}, position=(50, 0))  # type: ignore[arg-type]
        applier.copy_rows(table, rows[3:], snapshot={"done": True}, position=(50, 0))  # type: ignore[arg-type]
        assert applier.checkpoint.snapshot_done
    assert query(target, "SELECT count(*), min(description) FROM catalog.products") == [(5, "tab\there\nnew \\ line")]
    assert query(target, "SELECT attributes->>'color' FROM catalog.products LIMIT 1") == [("red",)]


def test_event_is_change_event() -> None:
    assert isinstance(event("c", 1, 1, after=product(1)), ChangeEvent)


def test_out_of_order_unique_values_resolve_by_position(legacy_and_target: tuple[str, str]) -> None:
    """Kafka orders per key only: a row can arrive holding a unique value another row still holds."""
    _, target = legacy_and_target
    with _applier(target, ordered=False) as applier:
        applier.apply([event("c", 1, 100, after=product(1, sku="X"))])
        # Source: at 200 row 1 is deleted, at 300 row 2 takes sku X. Row 2's insert arrives first.
        result = applier.apply([event("c", 2, 300, after=product(2, sku="X"))])
        assert result.dead_lettered == 0
        applier.apply([event("d", 1, 200, before={"id": 1})])
        assert [r[0] for r in _products(target)] == [2]
        # A stale change of row 3 claiming X (older than row 2's) is skipped, not dead-lettered.
        result = applier.apply([event("c", 3, 250, after=product(3, sku="X"))])
        assert result.dead_lettered == 0 and [r[0] for r in _products(target)] == [2]


@pytest.mark.parametrize("server_version", [None, 150000], ids=["origin-none", "origin-messages"])
def test_applier_writes_are_not_captured_again(legacy_and_target: tuple[str, str], server_version: int | None) -> None:
    """Capture on the service's own database (a reverse stream) sees direct writes, never the applier's.

    PostgreSQL 16 drops the applier's changes itself (`origin 'none'`); `server_version=150000`
    makes the capture ask as it does of older servers, which send Origin messages instead.
    """
    from cdc.capture import Capture, CaptureConfig
    from cdc.slot import create_slot, ensure_publication
    from cdc.transport import MemoryTransport
    from tests.cdc.conftest import Collected

    _, target = legacy_and_target
    slot = "t_reverse_" + uuid.uuid4().hex[:8]
    ensure_publication(target, slot, ["catalog.products"])
    with create_slot(target, slot):
        pass
    transport = MemoryTransport(max_batches=64)
    capture = Capture(CaptureConfig(dsn=target, slot=slot, publication=slot, read_timeout=0.2), transport,
                      server_version=server_version)
    capture.start()
    collected = Collected(transport)
    try:
        direct = "INSERT INTO catalog.products VALUES (%s, %s, 'direct', 'd', '', 100, 1, true, 1, '{}', now(), now())"
        execute(target, direct, (9001, "DIRECT-1"))
        with _applier(target) as applier:
            spec = applier.spec
            applier.apply([event("c", i, 100 + i, after=product(i)) for i in range(1, 101)])  # staged COPY
            applier.apply([event("u", 1, 300, before={"id": 1}, after=product(1, name="again")),
                           event("d", 2, 310, before={"id": 2})])
            applier.apply([replace(event("c", 0, 320), op="t", key=None, after=None)])
            applier.copy_rows(spec.tables[1], [RowMapper(spec.tables[1]).map(product(i)) for i in (3, 4)],  # type: ignore[misc]
                              snapshot={"done": False}, position=(330, 0))
        execute(target, direct, (9002, "DIRECT-2"))
        execute(target, "UPDATE catalog.products SET title = 'direct too' WHERE id = 9002")
        collected.drain(lambda c: any(e.op == "u" for e in c.events), what="the last direct write")
        assert [(e.op, e.key) for e in collected.events] == [("c", {"id": 9001}), ("c", {"id": 9002}), ("u", {"id": 9002})]
        # The applier did write (its truncate took the first direct row too).
        assert [r[0] for r in query(target, "SELECT id FROM catalog.products ORDER BY id")] == [3, 4, 9002]
    finally:
        capture.stop()
        transport.close()
        capture.join(timeout=20)
        capture.close()


def test_inserts_of_existing_rows_fall_back_to_upserts(legacy_and_target: tuple[str, str]) -> None:
    # Large insert-only batches are COPYed straight in; a key that exists (or whose guard does)
    # makes that COPY fail, and the batch is upserted instead (on_error: stop: no one-by-one rescue).
    _, target = legacy_and_target
    with Applier(replace(spec_for(None, target), on_error="stop"), ordered=False) as applier:
        applier.apply([event("c", i, 1000 + i, after=product(i)) for i in range(1, 101)])
        applier.apply([event("d", 5, 2000, before={"id": 5})])
        again = [event("c", 5, 3000, after=product(5, name="again"))]
        result = applier.apply(again + [event("c", i, 3000 + i, after=product(i)) for i in range(101, 171)])
        assert result.applied == 71
        result = applier.apply([event("c", i, 4000 + i, after=product(i, name=f"v2 {i}")) for i in range(100, 180)])
        assert result.applied == 80
    rows = dict(query(target, "SELECT id, title FROM catalog.products"))
    assert len(rows) == 179 and rows[5] == "again" and rows[100] == "v2 100" and rows[170] == "v2 170"
    assert query(target, "SELECT count(*), max(commit_lsn) FROM strangler.row_position") == [(179, 4179)]
