from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from facade.shadow.store import ComparisonRecord, DiffRecord, DropRecord, SampleRecord, ShadowStore, ShadowStoreError
from facade.shadow.writer import StoreWriter

EP = "GET /api/products/{id}"


def record(ts: float, *, match: bool = False, field: str = "$.price") -> ComparisonRecord:
    return ComparisonRecord(
        ts=ts,
        route="catalog-read",
        endpoint=EP,
        primary_status=200,
        candidate_status=200,
        primary_ms=1.5,
        candidate_ms=2.5,
        match=match,
        match_denoised=match,
        differences=() if match else (DiffRecord(field.replace("*", "0"), field, "value"), DiffRecord("$.t", "$.t", "value", "noise")),
        samples=() if match else (SampleRecord(field, "value", field, "GET /api/products/1", '"1.00"', '"2.00"'),),
    )


def roundtrip(store: ShadowStore) -> None:
    store.create()
    store.write([record(100.0 + i) for i in range(5)] + [record(200.0, match=True)], [DropRecord(150.0, "catalog-read", "queue_full", 3)])
    data = store.load()
    assert len(data.comparisons) == 6 and data.comparisons[0]["endpoint"] == EP
    assert {d["origin"] for d in data.differences} == {"candidate", "noise"} and len(data.differences) == 10
    assert len(data.samples) == 3  # samples_per_field
    assert data.drops[0]["count"] == 3
    assert len(store.load(since=150.0).comparisons) == 1
    assert store.load(route="other").comparisons == []
    assert store.load(since=150.0).differences == []


def test_sqlite_file_roundtrip(tmp_path: Path) -> None:
    store = ShadowStore(f"sqlite:///{tmp_path}/nested/shadow.db")
    try:
        roundtrip(store)
    finally:
        store.close()
    assert (tmp_path / "nested" / "shadow.db").exists()


def test_postgresql_roundtrip(database: str) -> None:
    store = ShadowStore(database)
    try:
        roundtrip(store)
    finally:
        store.close()


def test_retention_by_age_and_rows(tmp_path: Path) -> None:
    store = ShadowStore(f"sqlite:///{tmp_path}/s.db", retention=100.0, max_rows=3)
    store.create()
    store.write([record(float(t)) for t in (10, 950, 960, 970, 980, 990)], [DropRecord(10.0, "r", "queue_full", 1)])
    assert store.prune(now=1000.0) == 3  # one too old, two beyond max_rows
    data = store.load()
    assert [c["ts"] for c in data.comparisons] == [970.0, 980.0, 990.0]
    assert {d["comparison_id"] for d in data.differences} == {c["id"] for c in data.comparisons}
    assert data.drops == [] and all(s["ts"] >= 970.0 for s in data.samples)
    store.close()


def big(ts: float, i: int) -> ComparisonRecord:
    """A comparison with a 16 KB sample body, under a field of its own (so every sample is kept)."""
    field = f"$.f{i}"
    sample = SampleRecord(field, "value", field, "GET /api/products/1", '"1.00"', '"2.00"', primary_body="x" * 16384)
    return ComparisonRecord(ts, "catalog-read", EP, 200, 200, 1.0, 2.0, False, False, differences=(DiffRecord(field, field, "value"),), samples=(sample,))


def test_retention_by_size_keeps_the_newest_and_shrinks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = ShadowStore(f"sqlite:///{path}", max_size=1024 * 1024)
    store.create()
    store.write([big(1000.0 + i, i) for i in range(200)])
    before = store.size()
    assert before is not None and before > 3 * 1024 * 1024
    deleted = store.prune(now=1300.0)
    data = store.load()
    assert deleted == 200 - len(data.comparisons) and 0 < len(data.comparisons) < 200
    assert store.size() <= 1024 * 1024
    assert [c["ts"] for c in data.comparisons] == [1000.0 + i for i in range(200 - len(data.comparisons), 200)]  # the newest
    assert all(s["ts"] >= data.comparisons[0]["ts"] for s in data.samples)
    assert store.prune(now=1300.0) == 0  # under the limit now: nothing more goes
    store.close()
    assert path.stat().st_size <= 1.2 * 1024 * 1024, f"the file kept {path.stat().st_size} bytes"


def test_postgresql_store_measures_its_size(database: str) -> None:
    store = ShadowStore(database)
    try:
        store.create()
        store.write([big(1000.0 + i, i) for i in range(20)])
        assert store.size() > 0
    finally:
        store.close()


def test_bad_url_is_explained() -> None:
    with pytest.raises(ShadowStoreError, match="not a SQLAlchemy URL"):
        ShadowStore("not a url")


def test_writer_batches_off_the_caller_and_flushes_on_stop(tmp_path: Path) -> None:
    store = ShadowStore(f"sqlite:///{tmp_path}/w.db")

    async def scenario() -> int:
        writer = StoreWriter(store, batch=10, interval=0.05)
        await writer.start()
        now = time.time()  # the writer applies retention (7 days by default) as it goes
        for i in range(25):
            writer.submit(record(now + i))
        writer.submit_drops([DropRecord(now, "catalog-read", "body_too_large", 2)])
        await writer.stop()
        return writer.written

    assert asyncio.run(scenario()) == 25
    reopened = ShadowStore(f"sqlite:///{tmp_path}/w.db")
    assert len(reopened.load().comparisons) == 25
    assert reopened.load().drops[0]["reason"] == "body_too_large"
    reopened.close()


def test_writer_counts_overflow_instead_of_growing(tmp_path: Path) -> None:
    store = ShadowStore(f"sqlite:///{tmp_path}/o.db")
    writer = StoreWriter(store, capacity=2)
    for i in range(5):
        writer.submit(record(float(i)))
    assert writer.pending == 2 and writer.lost == 3
    store.close()
