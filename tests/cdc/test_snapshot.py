from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest

from cdc.events import ChangeEvent
from cdc.exceptions import CDCError
from cdc.slot import create_slot, describe_tables, ensure_publication, exported_snapshot
from cdc.snapshot import Snapshot, SnapshotProgress
from tests.cdc.conftest import Running, SourceDB, insert_products
from tests.support import wait_for

PRODUCTS = "public.catalog_product"


def current_rows(source: SourceDB, table: str = PRODUCTS) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The table as it is now, converted exactly like captured values."""
    [info] = describe_tables(source.conn, [table])
    snapshot = Snapshot(source.url, [info], snapshot_name=None, consistent_point=0, chunk_rows=5000)
    return {
        tuple(row[k] for k in info.key_columns): row
        for chunk in snapshot.chunks() for row in chunk.rows
    }


def replay(events: list[ChangeEvent]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Target state from events, applying each only when newer than the row's last position."""
    state: dict[tuple[Any, ...], tuple[tuple[int, int], dict[str, Any] | None]] = {}
    for event in events:
        if event.op == "t":
            state.clear()
            continue
        assert event.key is not None
        key = tuple(event.key.values())
        previous = state.get(key)
        if previous is not None and previous[0] >= event.position:
            continue
        state[key] = (event.position, event.after if event.op in ("r", "c", "u") else None)
    return {key: row for key, (_, row) in state.items() if row is not None}


def test_snapshot_then_stream_delivers_every_row_exactly_once(
    source: SourceDB, start_capture: Callable[..., Running]
) -> None:
    insert_products(source, 3000)
    source.execute("ANALYZE catalog_product")
    slot = source.slot_name()
    tables = ensure_publication(source.url, slot, [PRODUCTS])
    counter = itertools.count(10_001)
    writes = {"inserted": 0, "updated": 0, "deleted": 0}
    progress: list[SnapshotProgress] = []
    writer_errors: list[BaseException] = []

    def concurrent_writes(report: SnapshotProgress) -> None:
        """Runs after each chunk while the snapshot transaction is open: writes it must not see."""
        progress.append(report)
        n = len(progress)

        def write() -> None:
            try:
                new_id = next(counter)
                source.execute(
                    "INSERT INTO catalog_product (id, sku, name, slug, price, category_id, created_at, updated_at) "
                    "VALUES (%s, %s, 'late', 'late', 1.00, 1, now(), now())", (new_id, f"LATE-{new_id}"),
                )
                writes["inserted"] += 1
                # rows both already copied (low ids) and not yet copied (high ids)
                writes["updated"] += source.execute(
                    "UPDATE catalog_product SET stock = stock + 1000, is_active = NOT is_active WHERE id IN (%s, %s)", (n * 7, 3000 - n * 7)
                )
                writes["deleted"] += source.execute(
                    "DELETE FROM catalog_product WHERE id IN (%s, %s)", (n * 11 + 1, 2999 - n * 11)
                )
            except BaseException as exc:
                writer_errors.append(exc)

        thread = threading.Thread(target=write)
        thread.start()
        thread.join()

    with create_slot(source.url, slot) as created:
        snapshot = Snapshot(
            source.url, tables, snapshot_name=created.snapshot_name, consistent_point=created.consistent_point,
            chunk_rows=250, progress=concurrent_writes,
        )
        chunks = list(snapshot.chunks())
    assert not writer_errors
    snapshot_events = [event for chunk in chunks for event in chunk.events()]
    assert len(snapshot_events) == 3000
    assert len({tuple(e.key.values()) for e in snapshot_events if e.key}) == 3000
    assert all(e.op == "r" and e.position == (created.consistent_point, 0) for e in snapshot_events)
    assert [e.source.snapshot for e in snapshot_events[-2:]] == ["true", "last"]
    assert [c.done for c in chunks] == [False] * 11 + [True]
    assert progress[-1].total_done == 3000 and progress[-1].total_estimated == 3000
    assert [p.rows_done for p in progress] == sorted(p.rows_done for p in progress)

    run = start_capture([PRODUCTS], existing_slot=(slot, created.consistent_point))
    expected_changes = writes["inserted"] + writes["updated"] + writes["deleted"]
    run.collected.drain(lambda c: len(c.events) >= expected_changes, what="the concurrent writes")
    streamed = run.collected.events
    assert len(streamed) == expected_changes  # nothing doubled
    assert all(e.position > (created.consistent_point, 0) for e in streamed)
    final = current_rows(source)
    assert any(not row["is_active"] for row in final.values())
    assert replay(snapshot_events + streamed) == final


def test_snapshot_resumes_after_the_last_copied_key(source: SourceDB) -> None:
    insert_products(source, 1000)
    tables = ensure_publication(source.url, "p_resume", [PRODUCTS])
    with exported_snapshot(source.url, source.slot_name()) as exported:
        first = Snapshot(source.url, tables, snapshot_name=exported.snapshot_name, consistent_point=exported.consistent_point, chunk_rows=300)
        chunks = first.chunks()
        copied = [next(chunks), next(chunks)]
        chunks.close()  # interrupted after two chunks
    resume_key = copied[-1].last_key
    assert resume_key == ("600",)
    source.execute("UPDATE catalog_product SET stock = -1 WHERE id IN (1, 900)")
    with exported_snapshot(source.url, source.slot_name("_2")) as again:
        resumed = Snapshot(
            source.url, tables, snapshot_name=again.snapshot_name, consistent_point=again.consistent_point,
            chunk_rows=300, resume={PRODUCTS: resume_key},
        )
        rest = list(resumed.chunks())
    assert again.consistent_point > exported.consistent_point
    rows = [row for chunk in copied + rest for row in chunk.rows]
    assert [row["id"] for row in rows] == list(range(1, 1001))
    by_id = {row["id"]: row for row in rows}
    assert by_id[1]["stock"] == 1  # copied before the update, in the old snapshot
    assert by_id[900]["stock"] == -1  # copied after it
    assert rest[0].position == (again.consistent_point, 0)
    assert rest[0].raw_rows[0][0] == "601"


def test_snapshot_of_composite_keys_and_completed_tables(source: SourceDB) -> None:
    source.execute("INSERT INTO pairs SELECT i / 3, 'k' || (i % 3), 'v' FROM generate_series(0, 29) AS i")
    insert_products(source, 10)
    tables = ensure_publication(source.url, "p_pairs", ["public.pairs", PRODUCTS])
    snapshot = Snapshot(source.url, tables, snapshot_name=None, consistent_point=5, chunk_rows=4, completed=[PRODUCTS])
    chunks = list(snapshot.chunks())
    assert {c.table.name for c in chunks} == {"pairs"}
    keys = [(row["a"], row["b"]) for c in chunks for row in c.rows]
    assert keys == sorted(keys) and len(keys) == len(set(keys)) == 30


def test_snapshot_needs_a_live_exported_snapshot(source: SourceDB) -> None:
    tables = ensure_publication(source.url, "p_gone", [PRODUCTS])
    with create_slot(source.url, source.slot_name()) as created:
        name = created.snapshot_name
    # The snapshot dies with the walsender that exported it, which exits just after the close.
    wait_for(lambda: source.scalar("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' "
                                   "AND datname = current_database()") == 0, what="the walsender to exit")
    with pytest.raises(CDCError, match="exported snapshot lives only while"):
        list(Snapshot(source.url, tables, snapshot_name=name, consistent_point=created.consistent_point).chunks())
