from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest

from cdc.capture import Capture, CaptureConfig
from cdc.debezium import parse_record
from cdc.events import ChangeEvent, Column, Source
from cdc.kafka import KafkaConfig, KafkaTransport, topic_for
from cdc.slot import create_slot, ensure_publication, slot_state
from cdc.spec import SyncSpec
from tests.cdc.apply_fixtures import Background, legacy_and_target, running
from tests.cdc.conftest import SourceDB, insert_products
from tests.cdc.kafka_cluster import MockCluster
from tests.support import wait_for

__all__ = ["legacy_and_target"]

COLUMNS = (Column("id", "int4", optional=False, key=True), Column("sku", "varchar"), Column("price", "numeric"),
           Column("updated_at", "timestamptz"))


@pytest.fixture(scope="module")
def kafka() -> Iterator[str]:
    """librdkafka's in-process mock cluster, for the tests of this module."""
    cluster = MockCluster(1)
    yield cluster.bootstrap_servers
    cluster.close()


CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 300, "log_level": 3}
PRODUCER = {"log_level": 3}


def event(op: str, ident: int, lsn: int, table: str = "catalog_product") -> ChangeEvent:
    source = Source("legacy", "shop", "public", table, lsn, 1000 + lsn // 10 * 10, 7, 1_700_000_000_000, "false")
    row = {"id": ident, "sku": f"SKU-{ident}", "price": Decimal("9.50"),
           "updated_at": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)}
    key = {"id": ident}
    if op == "d":
        return ChangeEvent("d", source, key, key, None, 1, COLUMNS)
    return ChangeEvent(op, source, key, None if op == "c" else key, row, 1, COLUMNS)


def publish_all(transport: KafkaTransport, batches: list[list[ChangeEvent]]) -> None:
    durable = threading.Semaphore(0)
    for events in batches:
        transport.publish(events, events[-1].position, durable.release)
    for _ in batches:
        assert durable.acquire(timeout=20), "a batch was never reported durable"


def consume(transport: KafkaTransport, until: Callable[[list[ChangeEvent]], bool], *, ack: bool = True) -> list[ChangeEvent]:
    seen: list[ChangeEvent] = []

    def more() -> bool:
        for batch in transport.batches(0.2):
            seen.extend(batch.events)
            if ack:
                batch.ack()
            if until(seen):
                return True
        return until(seen)

    wait_for(more, timeout=30, interval=0, what="records from Kafka")
    return seen


def test_events_travel_through_kafka_with_tombstones(kafka: str) -> None:
    sent = [event("c", 1, 10), event("c", 2, 20), event("u", 1, 30), event("d", 2, 40)]
    topics = []
    for with_schema in (False, True):
        config = KafkaConfig(bootstrap_servers=kafka, topic_prefix=f"legacy{int(with_schema)}", with_schema=with_schema,
                             producer=PRODUCER)
        producer = KafkaTransport(config)
        publish_all(producer, [sent[:2], sent[2:]])
        assert producer.delivered == 5  # four events and the delete's tombstone
        producer.close()
        topics.append(topic_for(config.topic_prefix, "public", "catalog_product"))

    raw: list[tuple[str, bytes | None, bytes | None]] = []
    parsed: dict[str, list[ChangeEvent]] = {topic: [] for topic in topics}

    def recording_parse(key: bytes | None, value: bytes | None, topic: str) -> ChangeEvent | None:
        raw.append((topic, key, value))
        parsed_event = parse_record(key, value, topic)
        if parsed_event is not None:
            parsed[topic].append(parsed_event)
        return parsed_event

    consumer = KafkaTransport(
        KafkaConfig(bootstrap_servers=kafka, topics=tuple(topics), consumer=CONSUMER, group_id="appliers-both"),
        parse=recording_parse,
    )
    received = consume(consumer, lambda seen: len(seen) == 8)
    consumer.close()
    assert len(received) == 8
    for with_schema, topic in zip((False, True), topics):
        on_topic = sorted(parsed[topic], key=lambda e: e.position)
        assert [(e.op, e.key, e.position, e.source.table) for e in on_topic] == [
            (e.op, e.key, e.position, e.source.table) for e in sent
        ]
        assert on_topic[2].after is not None and on_topic[2].after["sku"] == "SKU-1"
        # key = primary key JSON, value = envelope (Connect schema or not), tombstone after the delete
        records = [(key, value) for t, key, value in raw if t == topic and key is not None]
        keys = [json.loads(key) for key, _ in records]
        payloads = [k["payload"] if with_schema else k for k in keys]
        assert sorted(json.dumps(p) for p in payloads) == ['{"id": 1}'] * 2 + ['{"id": 2}'] * 3
        for_key_2 = [value for (key, value), p in zip(records, payloads) if p == {"id": 2}]
        assert len(for_key_2) == 3 and for_key_2[-1] is None
        envelope = json.loads(for_key_2[1] or b"{}")
        assert ("schema" in envelope) is with_schema
        if with_schema:
            assert keys[0]["schema"]["name"] == "legacy.public.catalog_product.Key"


def test_consumer_restart_resumes_from_committed_offsets(kafka: str) -> None:
    config = KafkaConfig(bootstrap_servers=kafka, topic_prefix="restart", producer=PRODUCER, consumer=CONSUMER,
                         group_id="appliers-restart", max_poll_records=5)
    producer = KafkaTransport(config)
    sent = [event("c", i, i * 10) for i in range(1, 31)]
    publish_all(producer, [sent[i:i + 5] for i in range(0, 30, 5)])
    producer.close()

    first = KafkaTransport(config)
    acked: list[ChangeEvent] = []
    for batch in first.batches(5.0):
        acked.extend(batch.events)
        batch.ack()
        if len(acked) >= 10:
            break
    unacked = next(iter(first.batches(5.0))).events  # received, never acknowledged
    assert unacked
    first.close()

    second = KafkaTransport(config)
    rest = consume(second, lambda seen: len({e.key["id"] for e in acked + seen if e.key}) == 30)
    second.close()
    ids_acked = {e.key["id"] for e in acked if e.key}
    ids_after = [e.key["id"] for e in rest if e.key]
    assert ids_acked.isdisjoint(ids_after)  # committed offsets are respected
    assert ids_acked | set(ids_after) == set(range(1, 31))  # nothing lost
    assert {e.key["id"] for e in unacked if e.key} <= set(ids_after)  # unacknowledged: delivered again


def test_capture_acknowledges_the_slot_only_after_kafka_delivery(kafka: str, source: SourceDB) -> None:
    slot = source.slot_name()
    ensure_publication(source.url, slot, ["public.catalog_product"])
    with create_slot(source.url, slot):
        pass
    config = KafkaConfig(bootstrap_servers=kafka, topic_prefix="e2e", producer=PRODUCER, consumer=CONSUMER,
                         group_id="appliers-e2e")
    producer = KafkaTransport(config)
    capture = Capture(CaptureConfig(dsn=source.url, slot=slot, publication=slot, read_timeout=0.2), producer)
    capture.start()
    try:
        insert_products(source, 50)
        source.execute("DELETE FROM catalog_product WHERE id <= 5")
        end = source.scalar("SELECT pg_current_wal_lsn()::text")
        from cdc.replication import parse_lsn

        wait_for(lambda: (s := slot_state(source.url, slot)) and (s.confirmed_flush_lsn or 0) >= parse_lsn(end),
                 timeout=30, what="the slot acknowledged after delivery")
        assert producer.delivered == 60  # 50 inserts, 5 deletes, 5 tombstones
        consumer = KafkaTransport(config)
        received = consume(consumer, lambda seen: len(seen) == 55)
        consumer.close()
        assert sorted(e.key["id"] for e in received if e.op == "d" and e.key) == [1, 2, 3, 4, 5]
        # one partition per table: the table's changes arrive in commit order
        assert [e.position for e in received] == sorted(e.position for e in received)
        assert all(e.source.table == "catalog_product" and e.source.db == source.conn.info.dbname for e in received)
    finally:
        capture.stop()
        capture.join(timeout=20)
        capture.close()
        producer.close()


@contextmanager
def kafka_sync(spec: SyncSpec) -> Iterator[Background]:
    """`cdc run --transport kafka` (capture and applier) in a thread, on a mock cluster of its own."""
    cluster = MockCluster(1)
    try:
        with running(spec, transport="kafka", bootstrap_servers=cluster.bootstrap_servers, kafka_config=CONSUMER) as bg:
            yield bg
    finally:
        cluster.close()


def test_pipeline_runs_over_kafka_from_snapshot_to_stream(legacy_and_target: tuple[str, str]) -> None:
    """The distributed mode in one process: capture -> Kafka (mock cluster) -> consumer group -> store."""
    from cdc.verify import verify
    from tests.cdc.apply_fixtures import T0, execute, query, spec_for

    legacy, target = legacy_and_target
    execute(legacy, "INSERT INTO catalog_category (id, name, slug) VALUES (1, 'Tools', 'tools')")
    insert = (
        "INSERT INTO catalog_product (id, sku, name, slug, price, category_id, created_at, updated_at) "
        "SELECT g, 'SKU-' || g, 'Product ' || g, 'p-' || g, 1.50, 1, %s, %s FROM generate_series(%s, %s) g"
    )
    execute(legacy, insert, (T0, T0, 1, 100))
    spec = spec_for(legacy, target)
    count = lambda: int(query(target, "SELECT count(*) FROM catalog.products")[0][0])  # noqa: E731
    with kafka_sync(spec) as bg:
        wait_for(lambda: count() == 100 or bg.errors, timeout=60, what="the snapshot")
        execute(legacy, insert, (T0, T0, 101, 150))
        execute(legacy, "DELETE FROM catalog_product WHERE id <= 10")
        execute(legacy, "UPDATE catalog_product SET price = 2.75 WHERE id = 50")
        wait_for(lambda: count() == 140 or bg.errors, timeout=60, what="changes streamed through Kafka")
        wait_for(lambda: query(target, "SELECT price_cents FROM catalog.products WHERE id = 50") == [(275,)] or bg.errors,
                 timeout=30, what="the update")
    assert verify(spec, wait=10).identical


def test_heartbeats_reach_a_kafka_fed_applier_so_an_idle_sync_lags_little(legacy_and_target: tuple[str, str]) -> None:
    """Idle tables, busy server: the capture's heartbeats travel through the heartbeat topic and
    move the applier's checkpoint past WAL that holds nothing for this sync."""
    from cdc.status import status
    from tests.cdc.apply_fixtures import checkpoint_of, execute, query, seed, spec_for, wal_position

    legacy, target = legacy_and_target
    seed(legacy, 10)
    spec = spec_for(legacy, target)
    with kafka_sync(spec) as bg:
        execute(legacy, "UPDATE catalog_product SET stock = 99 WHERE id = 1")
        wait_for(lambda: query(target, "SELECT stock FROM catalog.products WHERE id = 1") == [(99,)] or bg.errors,
                 timeout=60, what="the change through Kafka")
        assert not bg.errors, bg.errors
        _, change_ms = checkpoint_of(target, spec)
        # WAL with nothing for this sync (a table outside the publication); the tables stay idle.
        before = wal_position(legacy)
        execute(legacy, "CREATE TABLE side_note AS SELECT g AS n, repeat('x', 100) AS note FROM generate_series(1, 2000) g")
        after = wal_position(legacy)
        wait_for(lambda: checkpoint_of(target, spec)[0] > after or bg.errors, timeout=60,
                 what="a heartbeat after the unrelated WAL in the checkpoint")
        assert not bg.errors, bg.errors
        an_hour_later = change_ms / 1000 + 3600
        st = status(spec, now=lambda: an_hour_later)
        assert st.lag_bytes is not None and st.lag_bytes < after - before  # not the side table's WAL
        assert st.lag_seconds is not None and st.lag_seconds < 3600  # measured from a heartbeat, not the change
