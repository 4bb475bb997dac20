"""Embedded pipeline end to end: snapshot, then streamed changes, into the catalog store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

from cdc.exceptions import SchemaChangedError
from cdc.pipeline import run
from cdc.slot import slot_state
from cdc.spec import SyncSpec
from cdc.status import status
from cdc.verify import verify
from tests.cdc.apply_fixtures import Background, execute, legacy_and_target, query, running, seed, spec_for
from tests.support import wait_for

__all__ = ["legacy_and_target"]


def _count(target: str) -> int:
    return int(query(target, "SELECT count(*) FROM catalog.products")[0][0])


def test_snapshot_then_stream_updates_deletes_truncate_and_key_change(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 1000)
    execute(legacy, "INSERT INTO catalog_product (id, sku, name, slug, price, category_id, created_at, updated_at)"
                    " VALUES (5000, '__internal-x', 'hidden', 'h', 1, 1, now(), now())")
    spec = spec_for(legacy, target)
    progress: list[tuple[str, int, int]] = []
    with running(spec, on_progress=lambda *a: progress.append(a)):
        wait_for(lambda: _count(target) == 1000 and query(target, "SELECT count(*) FROM catalog.categories")[0][0] == 1,
                 timeout=30, what="snapshot")
        assert progress and progress[-1][1] >= 1000 - 300
        seed(legacy, 200, start=1001)
        execute(legacy, "UPDATE catalog_product SET price = 1.25, name = 'Changed' WHERE id <= 10")
        execute(legacy, "DELETE FROM catalog_product WHERE id BETWEEN 20 AND 29")
        execute(legacy, "UPDATE catalog_product SET id = 9000 WHERE id = 30")
        wait_for(lambda: query(target, "SELECT count(*) FROM catalog.products WHERE id = 9000")[0][0] == 1, timeout=30,
                 what="streamed changes")
        result = verify(spec, wait=20)
        assert result.identical, result.to_dict()
        assert query(target, "SELECT title, price_cents FROM catalog.products WHERE id = 3") == [("Changed", 125)]
        st = status(spec)
        assert st.slot_exists and st.snapshot["done"] and st.dead_letters == 0
        execute(legacy, "TRUNCATE catalog_product")
        wait_for(lambda: _count(target) == 0, timeout=30, what="truncate")
    state = slot_state(legacy, spec.slot_name)
    assert state is not None and not state.active


def test_restart_resumes_without_snapshot(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 300)
    spec = spec_for(legacy, target)
    first = run(spec, until_caught_up=True, idle_timeout=0.5, heartbeat_interval=0.3)
    assert first.snapshot_rows == 301  # 300 products + 1 category
    execute(legacy, "UPDATE catalog_product SET stock = 99 WHERE id = 1")
    second = run(spec, until_caught_up=True, idle_timeout=1.0, heartbeat_interval=0.3)
    assert second.snapshot_rows == 0 and second.applied >= 1
    assert verify(spec, wait=10).identical


def test_drop_removes_slot_and_publication_and_reset_recopies(legacy_and_target: tuple[str, str]) -> None:
    from cdc.teardown import drop

    legacy, target = legacy_and_target
    seed(legacy, 50)
    spec = spec_for(legacy, target)
    run(spec, until_caught_up=True, idle_timeout=0.3, heartbeat_interval=0.3)
    assert drop(spec, reset=True) == {"slot_dropped": True, "publication_dropped": True, "checkpoint_reset": True}
    assert slot_state(legacy, spec.slot_name) is None
    assert query(legacy, "SELECT count(*) FROM pg_publication WHERE pubname = %s", (spec.publication_name,)) == [(0,)]
    execute(target, "UPDATE catalog.products SET title = 'stale'")
    again = run(spec, until_caught_up=True, idle_timeout=0.3, heartbeat_interval=0.3)
    assert again.snapshot_rows == 51
    assert verify(spec, wait=5).identical
    assert drop(spec) == {"slot_dropped": True, "publication_dropped": True}


def _stock(target: str, pid: int) -> int | None:
    rows = query(target, "SELECT stock FROM catalog.products WHERE id = %s", (pid,))
    return int(rows[0][0]) if rows else None


@contextmanager
def streaming(legacy: str, target: str, rows: int = 20) -> Iterator[tuple[SyncSpec, Background]]:
    """`rows` products seeded, a run started and its snapshot in the target."""
    seed(legacy, rows)
    spec = spec_for(legacy, target)
    with running(spec) as bg:
        wait_for(lambda: _count(target) == rows, timeout=30, what="snapshot")
        yield spec, bg


def test_new_unmapped_legacy_column_is_ignored_and_the_stream_goes_on(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    with streaming(legacy, target) as (spec, bg):
        execute(legacy, "ALTER TABLE catalog_product ADD COLUMN colour text NOT NULL DEFAULT 'red'")
        execute(legacy, "UPDATE catalog_product SET stock = 70, colour = 'blue' WHERE id = 7")
        seed(legacy, 1, start=21)
        wait_for(lambda: _count(target) == 21 and _stock(target, 7) == 70, timeout=30, what="changes after ADD COLUMN")
        assert bg.thread.is_alive() and not bg.errors
        assert verify(spec, wait=10).identical


def test_retyped_or_dropped_mapped_legacy_column_stops_the_stream_and_says_the_fix(
    legacy_and_target: tuple[str, str]
) -> None:
    legacy, target = legacy_and_target
    with streaming(legacy, target) as (spec, bg):
        execute(legacy, "UPDATE catalog_product SET stock = 11 WHERE id = 1")
        wait_for(lambda: _stock(target, 1) == 11, timeout=30, what="a change before the ALTER")
        execute(legacy, "ALTER TABLE catalog_product ALTER COLUMN stock TYPE bigint")
        execute(legacy, "UPDATE catalog_product SET stock = 12 WHERE id = 2")
        error = bg.failure()
    assert isinstance(error, SchemaChangedError)
    assert "public.catalog_product.stock changed type from int4 to int8" in str(error)
    assert "Check the mapping, then restart the applier" in str(error)
    assert _stock(target, 2) == 2  # not applied: the slot still holds it
    # The mapping still holds for bigint: restarted, the held change is applied.
    with running(spec) as bg:
        wait_for(lambda: _stock(target, 2) == 12, timeout=30, what="the held change after the restart")
        assert verify(spec, wait=10).identical
        execute(legacy, "ALTER TABLE catalog_product DROP COLUMN description")
        execute(legacy, "UPDATE catalog_product SET stock = 13 WHERE id = 3")
        error = bg.failure()
    assert isinstance(error, SchemaChangedError)
    assert "description of public.catalog_product are mapped by the sync spec but no longer exist" in str(error)
    assert "Fix the spec, then restart the applier" in str(error)
    assert _stock(target, 3) == 3


PRODUCTS = "public.catalog_product"


class Writer:
    """Legacy writes while the snapshot runs: a thread of bounded, varied writes, and fixed ones
    between chunks (rows already copied and rows still to come) from the progress callback."""

    def __init__(self, legacy: str) -> None:
        self.conn = psycopg2.connect(legacy)
        self.conn.autocommit = True
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.writes = 0

    def between_chunks(self, copied: int) -> None:
        with self.conn.cursor() as cur:
            cur.execute("INSERT INTO catalog_product (id, sku, name, slug, price, category_id, created_at, updated_at)"
                        " VALUES (%s, %s, 'late', 'late', 1.50, 1, now(), now())", (10_000 + copied, f"LATE-{copied}"))
            cur.execute("UPDATE catalog_product SET stock = stock + 1000 WHERE id IN (%s, %s)", (copied - 7, copied + 150))
            cur.execute("DELETE FROM catalog_product WHERE id IN (%s, %s)", (copied - 13, copied + 100))

    def _loop(self) -> None:
        conn = psycopg2.connect(self.conn.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for n in range(1, 3000):
                    if self.stop.is_set():
                        return
                    if n % 3 == 0:
                        cur.execute("DELETE FROM catalog_product WHERE id = %s", (n * 7 % 2000,))
                    elif n % 3 == 1:
                        cur.execute("UPDATE catalog_product SET price = price + 1, name = 'moved' WHERE id = %s", (n * 13 % 2000,))
                    else:
                        cur.execute("INSERT INTO catalog_product (id, sku, name, slug, price, category_id, created_at, updated_at)"
                                    " VALUES (%s, %s, 'bg', 'bg', 2.25, 1, now(), now())", (20_000 + n, f"BG-{n}"))
                    self.writes += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        if self.thread.ident is not None:
            self.thread.join(30)
        self.conn.close()


def test_writes_during_the_pushdown_snapshot_are_neither_lost_nor_doubled(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 2000)
    spec = spec_for(legacy, target)
    writer = Writer(legacy)
    copied: list[int] = []

    def on_progress(table: str, done: int, total: int) -> None:
        if table != PRODUCTS:
            return
        copied.append(done)
        if len(copied) == 1:
            writer.thread.start()  # concurrent with the following chunks' COPY
        # Some of the thread's writes land between every two chunks, whatever the machine's load.
        wait_for(lambda: writer.writes >= 10 * len(copied) or writer.errors, timeout=30, what="concurrent writes")
        writer.between_chunks(done)
        if done == 2000:  # the snapshot sees the seeded rows only: this was its last chunk
            writer.stop.set()
            writer.thread.join(30)

    try:
        stats = run(spec, until_caught_up=True, idle_timeout=1.0, heartbeat_interval=0.3, chunk_rows=300,
                    on_progress=on_progress)
    finally:
        writer.close()
    assert not writer.errors
    assert copied == [300, 600, 900, 1200, 1500, 1800, 2000] and writer.writes >= 70
    assert stats.snapshot_rows == 2001 and stats.dead_lettered == 0
    assert stats.applied > 0
    result = verify(spec, wait=10)
    assert result.identical, result.to_dict()
    [(legacy_ids,)] = query(legacy, "SELECT array_agg(id ORDER BY id) FROM catalog_product")
    assert [r[0] for r in query(target, "SELECT id FROM catalog.products ORDER BY id")] == legacy_ids


def test_interrupted_snapshot_resumes_after_the_last_copied_chunk(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 1000)
    spec = spec_for(legacy, target)
    stop = threading.Event()
    first_run: list[tuple[str, int]] = []

    def stop_after_first_chunk(table: str, done: int, total: int) -> None:
        first_run.append((table, done))
        if table == PRODUCTS:
            stop.set()  # as SIGINT does: the run ends after this chunk

    first = run(spec, stop=stop, chunk_rows=300, heartbeat_interval=0.3, on_progress=stop_after_first_chunk)
    assert first_run == [("public.catalog_category", 1), (PRODUCTS, 300)]
    assert first.snapshot_rows == 301 and first.applied == 0
    [(state,)] = query(target, "SELECT snapshot FROM strangler.checkpoint WHERE name = %s", (spec.name,))
    assert state["done"] is False and state["tables"][PRODUCTS] == ["300"]
    assert query(target, "SELECT count(*), max(id) FROM catalog.products") == [(300, 300)]
    # While stopped: changes to rows copied already and to rows still to copy.
    execute(legacy, "UPDATE catalog_product SET stock = 500 WHERE id IN (5, 900)")
    execute(legacy, "DELETE FROM catalog_product WHERE id IN (10, 950)")
    seed(legacy, 1, start=2000)

    second_run: list[tuple[str, int]] = []
    second = run(spec, until_caught_up=True, idle_timeout=1.0, chunk_rows=300, heartbeat_interval=0.3,
                 on_progress=lambda table, done, total: second_run.append((table, done)))
    assert second_run[0] == (PRODUCTS, 600)  # not from the start
    assert second.snapshot_rows == 700  # ids 301..1000 less 950, and 2000
    [(resumed,)] = query(target, "SELECT snapshot FROM strangler.checkpoint WHERE name = %s", (spec.name,))
    assert resumed["done"] is True and resumed["consistent_point"] == state["consistent_point"]
    result = verify(spec, wait=10)
    assert result.identical, result.to_dict()
    assert query(target, "SELECT id, stock FROM catalog.products WHERE id IN (5, 10, 900, 950, 2000) ORDER BY id") == [
        (5, 500), (900, 500), (2000, 2000 % 7)]
