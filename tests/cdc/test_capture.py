from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any
from decimal import Decimal

import pytest

from cdc.capture import HEARTBEAT_PREFIX, Capture, CaptureConfig, EventBuilder
from cdc.events import UNAVAILABLE, ChangeEvent
from cdc.exceptions import CDCError
from cdc.pgoutput import Begin, Commit, Delete, Insert, LogicalMessage, Origin, Relation, RelationColumn, Truncate, Update
from cdc.replication import RawMessage, ReplicationError
from cdc.transport import Batch, MemoryTransport, TransportClosedError
from cdc.slot import MissingPrimaryKeyError, create_slot, UnknownTableError, drop_publication, drop_slot, ensure_publication, slot_state
from tests.cdc.conftest import Collected, Running, SourceDB, insert_products
from tests.cdc.pgoutput_encoder import encode
from tests.support import wait_for


def ops(events: list[ChangeEvent]) -> list[tuple[str, str, object]]:
    return [(e.op, e.source.table, None if e.key is None else tuple(e.key.values())) for e in events]


def test_inserts_updates_deletes_and_truncates_are_decoded(source: SourceDB, start_capture: Callable[..., Running]) -> None:
    run = start_capture(["public.catalog_product", "public.widgets", "public.pairs"])
    insert_products(source, 2)
    source.execute("UPDATE catalog_product SET price = 5.25, attributes = '{\"a\": [1, 2]}' WHERE id = 1")
    source.execute("DELETE FROM catalog_product WHERE id = 2")
    source.execute(
        "INSERT INTO widgets VALUES (1, -3, 9000000000, 1.5, 2.25, true, '\\x00ff', "
        "'12345678-1234-5678-1234-567812345678', '2024-02-29', '2024-01-02 03:04:05.678', "
        "'2024-01-02 03:04:05+02', '[1, \"x\"]', NULL)"
    )
    source.execute("INSERT INTO pairs VALUES (1, 'x', 'v1')")
    source.execute("UPDATE pairs SET b = 'y' WHERE a = 1")  # primary-key change
    source.execute("TRUNCATE widgets, pairs")
    collected = run.collected
    collected.drain(lambda c: sum(e.op == "t" for e in c.events) == 2, what="the truncate")

    assert ops(collected.events) == [
        ("c", "catalog_product", (1,)), ("c", "catalog_product", (2,)),
        ("u", "catalog_product", (1,)),
        ("d", "catalog_product", (2,)),
        ("c", "widgets", (1,)),
        ("c", "pairs", (1, "x")),
        ("d", "pairs", (1, "x")), ("c", "pairs", (1, "y")),
        ("t", "widgets", None), ("t", "pairs", None),
    ]
    created, _, updated, deleted, widget, _, pk_old, pk_new, _, _ = collected.events
    assert created.after is not None and created.after["sku"] == "SKU-1" and created.after["price"] == Decimal("1.99")
    assert created.after["created_at"] == dt.datetime(2024, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc)
    assert created.after["attributes"] == {"n": 1}
    assert updated.after is not None and updated.after["price"] == Decimal("5.25")
    assert updated.after["attributes"] == {"a": [1, 2]}
    assert updated.before == {"id": 1}
    assert deleted.before == {"id": 2} and deleted.after is None
    assert widget.after == {
        "id": 1, "small": -3, "big": 9_000_000_000, "ratio": 1.5, "precise": 2.25, "flag": True,
        "blob": b"\x00\xff", "token": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "born": dt.date(2024, 2, 29), "seen": dt.datetime(2024, 1, 2, 3, 4, 5, 678000),
        "at": dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=dt.timezone.utc), "doc": [1, "x"], "note": None,
    }
    assert pk_old.before == {"a": 1, "b": "x"} and pk_new.after == {"a": 1, "b": "y", "v": "v1"}
    assert pk_old.position == pk_new.position

    # positions: commit LSN of the transaction, then the change's own LSN; strictly increasing
    positions = [e.position for e in collected.events]
    assert positions == sorted(positions)
    assert all(p[0] > run.consistent_point for p in positions)
    assert created.source.db == source.conn.info.dbname and created.source.snapshot == "false"
    assert created.source.tx_id is not None and created.source.ts_ms > 0
    assert [b.final for b in collected.batches] == [True] * len(collected.batches)


def test_unchanged_toast_value_is_unavailable(source: SourceDB, start_capture: Callable[..., Running]) -> None:
    run = start_capture(["public.catalog_product"])
    big = os.urandom(8000).hex()  # stored out of line (STORAGE EXTERNAL), 16 kB
    insert_products(source, 1)
    source.execute("UPDATE catalog_product SET description = %s WHERE id = 1", (big,))
    source.execute("UPDATE catalog_product SET stock = 99 WHERE id = 1")
    run.collected.drain(lambda c: len(c.events) == 3)
    _, with_text, without_text = run.collected.events
    assert with_text.after is not None and with_text.after["description"] == big
    assert without_text.after is not None
    assert without_text.after["stock"] == 99
    assert without_text.after["description"] is UNAVAILABLE
    assert without_text.to_debezium()["after"]["description"] == "__debezium_unavailable_value"


def test_replica_identity_full_fills_unchanged_toast_from_the_old_row(
    source: SourceDB, start_capture: Callable[..., Running]
) -> None:
    source.execute("ALTER TABLE catalog_product REPLICA IDENTITY FULL")
    run = start_capture(["public.catalog_product"])
    big = os.urandom(4000).hex()
    insert_products(source, 1)
    source.execute("UPDATE catalog_product SET description = %s WHERE id = 1", (big,))
    source.execute("UPDATE catalog_product SET stock = 7 WHERE id = 1")
    source.execute("DELETE FROM catalog_product WHERE id = 1")
    run.collected.drain(lambda c: len(c.events) == 4)
    _, _, update, delete = run.collected.events
    assert update.key == {"id": 1}  # the primary key, not every identity column
    assert update.before is not None and update.before["stock"] == 1
    assert update.after is not None and update.after["description"] == big and update.after["stock"] == 7
    assert delete.key == {"id": 1} and delete.before is not None and delete.before["sku"] == "SKU-1"


def test_slot_flush_moves_only_after_the_applier_acks(source: SourceDB, start_capture: Callable[..., Running]) -> None:
    run = start_capture(["public.catalog_product"])
    run.collected.auto_ack = False
    insert_products(source, 3)
    run.collected.drain(lambda c: len(c.events) == 3)
    [batch] = run.collected.batches
    state = slot_state(source.url, run.slot)
    assert state is not None and state.confirmed_flush_lsn is not None
    assert state.confirmed_flush_lsn <= batch.position[0]
    batch.ack()
    wait_for(
        lambda: (s := slot_state(source.url, run.slot)) and (s.confirmed_flush_lsn or 0) > batch.position[0],
        what="confirmed_flush_lsn past the acknowledged commit",
    )


def test_idle_slot_advances_through_heartbeats(source: SourceDB, start_capture: Callable[..., Running]) -> None:
    run = start_capture(["public.catalog_product"], heartbeat_interval=0.2)
    first = slot_state(source.url, run.slot)
    assert first is not None and first.confirmed_flush_lsn is not None
    # WAL grows through writes to a table outside the publication; the slot must follow.
    source.execute("INSERT INTO logbook SELECT 'line ' || i FROM generate_series(1, 1000) AS i")
    written = source.scalar("SELECT pg_current_wal_lsn()::text")
    from cdc.replication import parse_lsn

    # Heartbeats reach the applier (here: the test, acking what it drains) behind every change.
    run.collected.drain(
        lambda _: bool((s := slot_state(source.url, run.slot)) and (s.confirmed_flush_lsn or 0) > parse_lsn(written)),
        timeout=15, what="the idle slot to advance past unrelated writes",
    )
    assert run.capture.stats.heartbeats_seen >= 1
    assert run.collected.events == [] and run.collected.batches and all(b.heartbeat_ms for b in run.collected.batches)


def test_large_transaction_is_published_in_bounded_chunks(source: SourceDB, start_capture: Callable[..., Running]) -> None:
    run = start_capture(["public.catalog_product"], max_batch_events=100)
    insert_products(source, 1000)
    run.collected.drain(lambda c: bool(c.batches) and c.batches[-1].final, what="the final chunk")
    batches = run.collected.batches
    assert [len(b.events) for b in batches] == [100] * 10 + [0]
    assert [b.final for b in batches] == [False] * 10 + [True]
    assert len({e.position[0] for e in run.collected.events}) == 1


def test_tables_need_a_primary_key_or_full_identity(source: SourceDB) -> None:
    with pytest.raises(MissingPrimaryKeyError, match=r"public.logbook has no primary key.*REPLICA IDENTITY FULL"):
        ensure_publication(source.url, "p_nopk", ["public.logbook"])
    source.execute("ALTER TABLE logbook REPLICA IDENTITY FULL")
    [info] = ensure_publication(source.url, "p_nopk", ["public.logbook"])
    assert info.key_columns == ("line",)
    with pytest.raises(UnknownTableError, match="public.nope"):
        ensure_publication(source.url, "p_nopk", ["public.nope"])


def test_slot_and_publication_are_dropped(source: SourceDB, start_capture: Callable[..., Running]) -> None:
    run = start_capture(["public.catalog_product"])
    with pytest.raises(CDCError, match="already exists; resume streaming from it"):
        with create_slot(source.url, run.slot):
            pass
    wait_for(lambda: (s := slot_state(source.url, run.slot)) and s.active, what="the slot in use")
    with pytest.raises(CDCError, match="in use by process"):
        drop_slot(source.url, run.slot)
    run.capture.stop()
    run.capture.join(timeout=20)
    wait_for(lambda: (s := slot_state(source.url, run.slot)) and not s.active, what="the slot released")
    assert drop_slot(source.url, run.slot) is True
    assert slot_state(source.url, run.slot) is None
    assert drop_slot(source.url, run.slot) is False
    assert drop_publication(source.url, run.publication) is True
    assert source.scalar("SELECT count(*) FROM pg_publication WHERE pubname = %s", (run.publication,)) == 0
    assert drop_publication(source.url, run.publication) is False


def test_collected_helper_times_out(source: SourceDB, start_capture: Callable[..., Running]) -> None:
    run = start_capture(["public.catalog_product"])
    with pytest.raises(AssertionError, match="timed out"):
        Collected(run.transport).drain(lambda c: bool(c.events), timeout=0.3)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
def test_huge_single_statement_update_streams_with_bounded_memory(
    source: SourceDB, start_capture: Callable[..., Running]
) -> None:
    """A one-statement update of 1,000,000 rows (measured: RSS grows ~5 MiB); set
    STRANGLER_BIG_TX_ROWS to try other sizes."""
    rows = int(os.environ.get("STRANGLER_BIG_TX_ROWS", "1000000"))
    source.execute("CREATE TABLE narrow (id int PRIMARY KEY, v int NOT NULL)")
    source.execute("INSERT INTO narrow SELECT i, 0 FROM generate_series(1, %s) AS i", (rows,))
    run = start_capture(["public.narrow"], max_batch_events=2000, max_batches=8)
    baseline = _rss_bytes()
    source.execute("UPDATE narrow SET v = v + 1")  # one statement, one transaction
    seen = 0
    peak = baseline
    final_batches = 0
    commit_lsns = set()
    collected = run.collected
    expected_batches = rows // 2000 + 1

    def consume(c: Collected) -> bool:
        nonlocal seen, peak, final_batches
        while c.batches:
            batch = c.batches.pop()
            seen += len(batch.events)
            final_batches += batch.final and batch.heartbeat_ms is None  # not a heartbeat sent meanwhile
            if batch.events:
                commit_lsns.add(batch.events[0].position[0])
                assert batch.events[-1].after == {"id": batch.events[-1].key["id"], "v": 1}  # type: ignore[index]
        c.events.clear()  # the test keeps counts, not events
        peak = max(peak, _rss_bytes())
        return final_batches == 1

    collected.drain(consume, timeout=600, what="the huge transaction")
    assert seen == rows
    assert len(commit_lsns) == 1
    # A heartbeat written while the update runs (the capture is idle until its commit) is a batch of its own.
    assert run.capture.stats.batches - run.capture.stats.heartbeats_seen == expected_batches
    # An update event takes ~0.9 kB, so holding them all would grow RSS by ~270 MB (300,000)
    # or ~900 MB (1,000,000); chunks of 2,000 behind a queue of 8 keep it to a few MB.
    assert peak - baseline < 64 * 1024 * 1024, f"RSS grew by {(peak - baseline) / 2**20:.0f} MiB"


# -- the pure core and the loop, through fakes of their seams ---------------------------------------

ITEMS = Relation(None, 99, "public", "items", "d", (
    RelationColumn(1, "id", 23, -1), RelationColumn(0, "price", 1700, -1), RelationColumn(0, "body", 25, -1),
))


def test_event_builder_maps_messages_to_events() -> None:
    builder = EventBuilder(server_name="legacy", database="shop", clock_ms=lambda: 5)
    builder.relation(ITEMS)
    builder.begin(Begin(final_lsn=900, commit_time=1_000_000, xid=42))
    [created] = builder.change(Insert(None, 99, ("1", "2.50", "x")), 100)
    assert created.op == "c" and created.key == {"id": 1} and created.after == {"id": 1, "price": Decimal("2.50"), "body": "x"}
    assert created.position == (900, 100) and created.source.tx_id == 42 and created.source.ts_ms == 946_684_801_000
    assert created.ts_ms == 5 and created.columns is not None and created.columns[1].type_name == "numeric"
    [updated] = builder.change(Update(None, 99, None, None, ("1", "3.00", UNAVAILABLE)), 110)
    assert updated.before == {"id": 1} and updated.after == {"id": 1, "price": Decimal("3.00"), "body": UNAVAILABLE}
    moved_from, moved_to = builder.change(Update(None, 99, "K", ("1", None, None), ("2", "3.00", "x")), 120)
    assert (moved_from.op, moved_from.key, moved_to.op, moved_to.key) == ("d", {"id": 1}, "c", {"id": 2})
    [deleted] = builder.change(Delete(None, 99, "K", ("2", None, None)), 130)
    assert deleted.before == {"id": 2} and deleted.after is None
    [truncated] = builder.change(Truncate(None, 0, (99,)), 140)
    assert truncated.op == "t" and truncated.key is None and truncated.source.table == "items"


def test_event_builder_drops_transactions_that_carry_an_origin() -> None:
    builder = EventBuilder(server_name="legacy", database="shop")
    builder.relation(ITEMS)
    builder.begin(Begin(final_lsn=900, commit_time=0, xid=42))
    builder.origin(Origin(commit_lsn=880, name="strangler_catalog"))
    assert builder.change(Insert(None, 99, ("1", "2.50", "x")), 100) == []
    assert builder.change(Truncate(None, 0, (99,)), 110) == []
    builder.commit(Commit(0, 900, 908, 0))
    builder.begin(Begin(final_lsn=1000, commit_time=0, xid=43))
    assert [e.op for e in builder.change(Insert(None, 99, ("1", "2.50", "x")), 950)] == ["c"]


def test_event_builder_uses_the_primary_key_over_identity_flags() -> None:
    full = Relation(None, 7, "public", "items", "f", tuple(
        RelationColumn(1, c.name, c.type_oid, -1) for c in ITEMS.columns
    ))
    builder = EventBuilder(server_name="legacy", database="shop", key_columns=lambda schema, table: ("id",))
    builder.relation(full)
    builder.begin(Begin(900, 0, 1))
    [event] = builder.change(Update(None, 7, "O", ("1", "1.00", "old"), ("1", "2.00", UNAVAILABLE)), 10)
    assert event.key == {"id": 1} and event.after == {"id": 1, "price": Decimal("2.00"), "body": "old"}
    with pytest.raises(CDCError, match="arrived before its Relation"):
        builder.change(Insert(None, 8, ("1",)), 11)


class ScriptedStream:
    """A ReplicationStream fake: plays encoded pgoutput messages, records feedback."""

    def __init__(self, messages: list[tuple[int, object]]) -> None:
        self.messages = [RawMessage(encode(m), lsn, lsn) for lsn, m in messages]  # type: ignore[arg-type]
        self.feedback: list[int] = []
        self.closed = False

    def start(self, slot: str, options: object, start_lsn: int = 0) -> None:
        self.options = options

    def read(self, timeout: float) -> RawMessage | None:
        return self.messages.pop(0) if self.messages else None

    def send_feedback(self, flush_lsn: int) -> None:
        self.feedback.append(flush_lsn)

    def close(self) -> None:
        self.closed = True


def transaction(xid: int, commit: int, rows: list[str]) -> list[tuple[int, object]]:
    out: list[tuple[int, object]] = [(commit - 50, Begin(commit, 0, xid))]
    out += [(commit - 40 + i, Insert(None, 99, (row, "1", "b"))) for i, row in enumerate(rows)]
    out.append((commit, Commit(0, commit, commit + 8, 0)))
    return out


def test_flush_position_advances_in_order_of_acknowledgements() -> None:
    script = [(10, ITEMS)] + transaction(1, 100, ["1"]) + transaction(2, 200, ["2", "3"])
    script.append((300, LogicalMessage(None, 0, 300, HEARTBEAT_PREFIX, b"1700000000000")))
    stream = ScriptedStream(script)
    transport = MemoryTransport()
    heartbeats: list[int] = []
    capture = Capture(
        CaptureConfig(dsn="postgresql://unused", slot="s", publication="p", heartbeat_interval=0.01, read_timeout=0),
        transport, stream=stream, heartbeat=lambda: heartbeats.append(1), key_columns=lambda s, t: None,
        database="shop", server_version=160000,
    )
    capture.start()
    try:
        batches: list[Batch] = []

        def three_batches() -> bool:
            batches.extend(transport.batches(0.01))
            return len(batches) == 3

        wait_for(three_batches, what="two transactions and the heartbeat")
        first, second, beat = batches
        assert [len(first.events), len(second.events)] == [1, 2] and first.final and second.final
        # The heartbeat travels behind them as a position-only batch with the source's clock.
        assert beat.events == [] and beat.position == (301, 0) and beat.heartbeat_ms == 1_700_000_000_000
        second.ack()  # out of order: the slot must not move past the unacknowledged first
        beat.ack()
        assert capture.stats.heartbeats_seen == 1
        assert stream.feedback == []
        first.ack()
        wait_for(lambda: stream.feedback, what="feedback")
        wait_for(lambda: stream.feedback[-1] == 301, what="flush past the heartbeat")
        assert stream.feedback == sorted(stream.feedback) and stream.feedback[0] in (108, 208, 301)
        wait_for(lambda: heartbeats, what="a heartbeat emitted while idle")
    finally:
        capture.stop()
        capture.join(timeout=10)
        capture.close()
    assert stream.closed
    assert stream.options == {"proto_version": "2", "publication_names": "p", "messages": "true", "origin": "none"}


class FlakyStream(ScriptedStream):
    """Loses the connection after `fail_after` messages of its first run; replays all on restart."""

    def __init__(self, messages: list[tuple[int, object]], fail_after: int | None, fail_starts: int = 0) -> None:
        super().__init__(messages)
        self.script = list(self.messages)
        self.fail_after = fail_after
        self.fail_starts = fail_starts
        self.starts = 0

    def start(self, slot: str, options: object, start_lsn: int = 0) -> None:
        self.starts += 1
        if self.starts <= self.fail_starts:
            raise ReplicationError("replication slot is active for another process")
        self.messages = list(self.script)
        self.served = 0

    def read(self, timeout: float) -> RawMessage | None:
        if self.fail_after is not None and self.starts == 1 and self.served == self.fail_after:
            raise ReplicationError("replication stream failed: server closed the connection unexpectedly")
        self.served += 1
        return super().read(timeout)


def flaky_capture(
    stream: ScriptedStream, transport: MemoryTransport, errors: list[BaseException] | None = None, **config: Any
) -> Capture:
    return Capture(
        CaptureConfig(dsn="postgresql://unused", slot="s", publication="p", read_timeout=0, **config),
        transport, stream=stream, heartbeat=lambda: None, key_columns=lambda s, t: None,
        database="shop", server_version=160000, on_error=None if errors is None else errors.append,
    )


def test_capture_reconnects_and_replays_from_the_slot() -> None:
    script = [(10, ITEMS)] + transaction(1, 100, ["1"]) + transaction(2, 200, ["2", "3"])
    stream = FlakyStream(script, fail_after=len(script) - 2)  # lost in the middle of the second transaction
    transport = MemoryTransport()
    capture = flaky_capture(stream, transport)
    capture.start()
    try:
        batches: list[Batch] = []

        def settled() -> bool:
            batches.extend(transport.batches(0.01))
            return len(batches) >= 3

        wait_for(settled, what="the replayed transactions")
    finally:
        capture.stop()
        capture.join(timeout=10)
        capture.close()
    # The first transaction again after the reconnect (its ack had not moved the slot), then the
    # second one whole: its half-read chunk from the lost connection was never published.
    assert [[e.key for e in b.events] for b in batches] == [[{"id": 1}], [{"id": 1}], [{"id": 2}, {"id": 3}]]
    assert capture.stats.reconnects == 1 and stream.starts == 2


def test_capture_gives_up_after_repeated_connection_failures() -> None:
    errors: list[BaseException] = []
    stream = FlakyStream([], fail_after=None, fail_starts=100)
    capture = flaky_capture(stream, MemoryTransport(), errors, max_reconnects=2)
    capture.start()
    with pytest.raises(ReplicationError, match="active for another process"):
        capture.join(timeout=20)
    capture.close()
    assert stream.starts == 3 and len(errors) == 1 and errors[0] is capture.error


def test_memory_transport_applies_backpressure_and_closes() -> None:
    transport = MemoryTransport(max_batches=1)
    assert transport.publish([], (1, 1), lambda: None, timeout=0) is True
    assert transport.publish([], (9, 9), lambda: None, timeout=0.01) is False  # full
    blocked_done: list[str] = []

    def publish_second() -> None:
        try:
            transport.publish([], (2, 2), lambda: None)
            blocked_done.append("published")
        except TransportClosedError:
            blocked_done.append("closed")

    thread = threading.Thread(target=publish_second)
    thread.start()
    thread.join(0.2)
    assert thread.is_alive() and transport.pending() == 1  # full: the publisher waits
    [batch] = list(transport.batches(0.05))[:1]
    assert batch.position == (1, 1)
    thread.join(5)
    assert blocked_done == ["published"]
    transport.publish([], (3, 3), lambda: None)
    thread = threading.Thread(target=publish_second)
    thread.start()
    transport.close()
    thread.join(5)
    assert blocked_done == ["published", "closed"]
    assert [b.position for b in transport.batches(0.05)] == [(3, 3)]  # drained after close
    with pytest.raises(CDCError, match="at least 1"):
        MemoryTransport(max_batches=0)
