"""Kafka transport (confluent-kafka): Debezium-compatible topics between capture and appliers.

Producer side: one topic per table (`<prefix>.<schema>.<table>`), record key = the primary key
as JSON, value = the Debezium envelope (Connect schema included when `with_schema`); a delete is
followed by a tombstone. The idempotent producer (acks=all) reports deliveries; a batch counts
as durable, and the capture may move the slot past it, only once every record of it was
delivered. Consumer side: a consumer group with auto-commit off; a batch's offsets are
committed by `Batch.ack()`, after the applier committed the rows.

Heartbeats go to Debezium's heartbeat topic, `__debezium-heartbeat.<prefix>`: key
`{"serverName": prefix}`, value `{"ts_ms": source clock, "lsn": position}` (Debezium's own carry
`ts_ms` only). The capture produces one only once every record before it was delivered; the
applier applies one only when it has consumed every table partition up to its high watermark, so
that nothing published before the heartbeat is still unread. Then the heartbeat moves the
checkpoint's source time (and, with an `lsn`, its position): an idle sync's lag stays true.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.extras import missing_extra

try:
    from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError as exc:
    raise missing_extra("kafka", "the Kafka transport (cdc.kafka)", exc) from exc

from cdc.events import ChangeEvent, Position
from cdc.exceptions import CDCError
from cdc.transport import Batch, TransportClosedError

__all__ = ["KafkaConfig", "KafkaTransport", "KafkaTransportError", "ensure_topics", "heartbeat_topic", "run_applier",
           "topic_for"]

RecordParser = Callable[[bytes | None, bytes | None, str], "ChangeEvent | None"]


class KafkaTransportError(CDCError):
    """Kafka refused a record, a delivery failed, or consuming/committing failed."""


_BENIGN = (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART)


def topic_for(prefix: str, schema: str, table: str) -> str:
    return f"{prefix}.{schema}.{table}"


def heartbeat_topic(prefix: str) -> str:
    """Debezium's default heartbeat topic (`topic.heartbeat.prefix` + "." + `topic.prefix`)."""
    return f"__debezium-heartbeat.{prefix}"


def _heartbeat(value: bytes | None) -> tuple[int, int | None] | None:
    """(ts_ms, lsn or None) of a heartbeat record, with or without the Connect schema."""
    try:
        obj = json.loads(value) if value else None
    except ValueError:
        return None
    if isinstance(obj, dict) and set(obj) == {"schema", "payload"}:
        obj = obj["payload"]
    if not isinstance(obj, dict) or not isinstance(obj.get("ts_ms"), int):
        return None
    lsn = obj.get("lsn")
    return obj["ts_ms"], lsn if isinstance(lsn, int) else None


def ensure_topics(bootstrap_servers: str, topics: list[str], config: Mapping[str, Any]) -> None:
    """Create the spec's topics (one partition each: per-table order) so consumers see them at once."""
    settings: dict[str, str | int | float | bool] = {"bootstrap.servers": bootstrap_servers}
    if "log_level" in config:
        settings["log_level"] = str(config["log_level"])
    admin = AdminClient(settings)
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except KafkaException as exc:
        raise KafkaTransportError(f"cannot reach Kafka at {bootstrap_servers}: {exc.args[0].str()}") from exc
    topics = [t for t in topics if t not in existing]
    if not topics:
        return
    futures = admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=-1) for t in topics],
                                  operation_timeout=5, request_timeout=5)
    missing = []
    for topic, future in futures.items():
        try:
            future.result(timeout=20)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                missing.append(topic)
    # Brokers without CreateTopics (librdkafka's mock cluster) create topics on a metadata request.
    for topic in missing:
        try:
            admin.list_topics(topic=topic, timeout=10)
        except KafkaException as exc:
            raise KafkaTransportError(f"cannot create Kafka topic {topic!r}: {exc.args[0].str()}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaConfig:
    """Where the topics live and how records are written and read."""

    bootstrap_servers: str
    topic_prefix: str = "legacy"
    group_id: str = "strangler-applier"
    with_schema: bool = False
    topics: tuple[str, ...] = ()
    max_poll_records: int = 1000
    # One partition per table keeps its changes in commit order, so a primary-key change's
    # delete reaches the applier before its create (a unique column would reject it otherwise).
    ordered: bool = True
    join_timeout: float = 30.0
    producer: Mapping[str, Any] = field(default_factory=dict)
    consumer: Mapping[str, Any] = field(default_factory=dict)

    @property
    def heartbeat_topic(self) -> str:
        return heartbeat_topic(self.topic_prefix)


def _default_parser() -> RecordParser:
    from cdc.debezium import parse_record

    return parse_record


class KafkaTransport:
    """`Transport` over Kafka. The producer and the consumer are created on first use, so a
    capture process only produces and an applier process only consumes.

    Seams: pass `producer` / `consumer` objects (confluent-kafka's interface) to inject them;
    `parse` turns a record into a ChangeEvent (default: `cdc.debezium.parse_record`).
    """

    def __init__(
        self,
        config: KafkaConfig,
        *,
        producer: Producer | None = None,
        consumer: Consumer | None = None,
        parse: RecordParser | None = None,
    ) -> None:
        self.config = config
        self._producer = producer
        self._consumer = consumer
        self._parse = parse
        self._closed = threading.Event()
        self._poller: threading.Thread | None = None
        self._delivery_error: KafkaError | None = None
        self._lock = threading.Lock()
        self._assigned = threading.Event()
        self._interrupted = threading.Event()
        self.delivered = 0

    # -- producer ------------------------------------------------------------------------------

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            settings = {
                "bootstrap.servers": self.config.bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                **self.config.producer,
            }
            try:
                self._producer = Producer(settings)
            except KafkaException as exc:
                raise KafkaTransportError(f"cannot create the Kafka producer: {exc}") from exc
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_deliveries, name="kafka-deliveries", daemon=True)
            self._poller.start()
        return self._producer

    def _poll_deliveries(self) -> None:
        producer = self._producer
        assert producer is not None
        while not self._closed.is_set():
            producer.poll(0.1)

    def publish(
        self,
        batch_events: Sequence[ChangeEvent],
        position: Position,
        on_durable: Callable[[], None],
        *,
        final: bool = True,
        heartbeat_ms: int | None = None,
    ) -> None:
        """Produce the batch; `on_durable` runs once the broker acknowledged all of its records.

        A heartbeat (`heartbeat_ms`, no events) is one record on the heartbeat topic, produced
        once every record before it was delivered (see the module's docstring).
        """
        if self._closed.is_set():
            raise TransportClosedError("the Kafka transport is closed")
        if self._delivery_error is not None:
            raise KafkaTransportError(f"a Kafka delivery failed: {self._delivery_error}; the capture must restart")
        producer = self._ensure_producer()
        records: list[tuple[str, bytes | None, bytes | None]] = []
        value: bytes | None
        with_schema = self.config.with_schema
        for event in batch_events:
            topic = topic_for(self.config.topic_prefix, event.source.schema, event.source.table)
            key_json = event.key_json(with_schema=with_schema)
            key = None if key_json is None else json.dumps(key_json, separators=(",", ":")).encode()
            value = json.dumps(event.to_debezium(with_schema=with_schema), separators=(",", ":")).encode()
            records.append((topic, key, value))
            if event.op == "d":
                records.append((topic, key, None))  # tombstone: lets compaction forget the key
        if not records and heartbeat_ms is not None:
            producer.flush(self.config.join_timeout)  # every change before the heartbeat is in Kafka
            key = json.dumps({"serverName": self.config.topic_prefix}, separators=(",", ":")).encode()
            value = json.dumps({"ts_ms": heartbeat_ms, "lsn": position[0]}, separators=(",", ":")).encode()
            records.append((self.config.heartbeat_topic, key, value))
        if not records:
            on_durable()
            return
        partition = 0 if self.config.ordered else None
        remaining = [len(records)]
        lock = self._lock

        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self._delivery_error = error
                return
            with lock:
                remaining[0] -= 1
                self.delivered += 1
                done = remaining[0] == 0
            if done:
                on_durable()

        for topic, key, value in records:
            while True:
                try:
                    if partition is None:
                        producer.produce(topic, value=value, key=key, on_delivery=delivered)
                    else:
                        producer.produce(topic, value=value, key=key, partition=partition, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)  # local queue full: let deliveries drain it
                except KafkaException as exc:
                    raise KafkaTransportError(f"cannot produce to {topic!r}: {exc}") from exc

    def flush(self, timeout: float = 30.0) -> int:
        """Wait for outstanding deliveries; returns how many are still in flight."""
        if self._producer is None:
            return 0
        return int(self._producer.flush(timeout))

    # -- consumer ------------------------------------------------------------------------------

    def _ensure_consumer(self) -> Consumer:
        if self._consumer is None:
            settings = {
                "bootstrap.servers": self.config.bootstrap_servers,
                "group.id": self.config.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **self.config.consumer,
            }
            try:
                self._consumer = Consumer(settings)
            except KafkaException as exc:
                raise KafkaTransportError(f"cannot create the Kafka consumer: {exc}") from exc
            topics = list(self.config.topics) or [f"^{_regex_escape(self.config.topic_prefix)}\\..*"]
            self._consumer.subscribe([*topics, self.config.heartbeat_topic], on_assign=self._on_assign)
        else:
            self._assigned.set()  # an injected consumer is the caller's to subscribe
        return self._consumer

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.set()

    def batches(self, timeout: float) -> Iterator[Batch]:
        """Yield batches of up to `max_poll_records` records; stop after `timeout` s without any.

        A batch's `position` is the greatest event position in it ((0, 0) if it holds only
        tombstones); `ack()` commits its offsets synchronously.
        """
        consumer = self._ensure_consumer()
        parse = self._parse or _default_parser()
        # Joining the group takes a few seconds; until partitions are assigned an empty poll
        # does not mean "nothing to read".
        join_deadline = time.monotonic() + self.config.join_timeout
        while not self._closed.is_set() and not self._interrupted.is_set():
            try:
                messages = consumer.consume(num_messages=self.config.max_poll_records, timeout=timeout)
            except KafkaException as exc:
                raise KafkaTransportError(f"consuming failed: {exc}") from exc
            if not messages:
                if not self._assigned.is_set() and time.monotonic() < join_deadline:
                    continue
                return
            events: list[ChangeEvent] = []
            offsets: dict[tuple[str, int], int] = {}
            beat: tuple[int, int | None] | None = None
            for message in messages:
                error = message.error()
                if error is not None:
                    # A subscribed topic that no record has created yet is not a failure.
                    if error.code() in _BENIGN or (error.retriable() and not error.fatal()):
                        continue
                    raise KafkaTransportError(f"consuming failed: {error}")
                topic = message.topic()
                assert topic is not None
                if topic == self.config.heartbeat_topic:
                    beat = _heartbeat(message.value()) or beat
                else:
                    event = parse(message.key(), message.value(), topic)
                    if event is not None:
                        events.append(event)
                partition, offset = message.partition(), message.offset()
                if partition is not None and offset is not None:
                    offsets[(topic, partition)] = offset
            if not offsets:
                continue
            ack = self._committer(consumer, offsets)
            if events or beat is None:
                # With changes, a heartbeat among them adds nothing: they move the checkpoint.
                yield Batch(events, max((e.position for e in events), default=(0, 0)), ack, True)
            else:
                # Applied only when nothing published before it is still unread; otherwise it
                # says nothing (source time 0) and only its offset is committed.
                ts_ms, lsn = beat if self._read_everything(consumer) else (0, None)
                yield Batch([], (lsn or 0, 0), ack, True, heartbeat_ms=ts_ms)

    def _read_everything(self, consumer: Consumer) -> bool:
        """Whether every assigned table partition was consumed up to its high watermark."""
        parts = [tp for tp in consumer.assignment() if tp.topic != self.config.heartbeat_topic]
        if not parts:
            return False
        try:
            positions = consumer.position(parts)
            for tp in positions:
                low, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                offset = tp.offset
                if offset < 0:  # nothing consumed from it in this session: where the group is
                    [committed] = consumer.committed([tp], timeout=5)
                    offset = committed.offset if committed.offset >= 0 else low
                if offset < high:
                    return False
        except KafkaException:
            return False  # cannot tell: the next heartbeat asks again
        return True

    @staticmethod
    def _committer(consumer: Consumer, offsets: Mapping[tuple[str, int], int]) -> Callable[[], None]:
        partitions = [TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in offsets.items()]

        def ack() -> None:
            try:
                consumer.commit(offsets=partitions, asynchronous=False)
            except KafkaException as exc:
                raise KafkaTransportError(f"cannot commit consumer offsets: {exc}") from exc

        return ack

    def interrupt(self) -> None:
        """Make a waiting `batches()` return soon (e.g. the capture feeding the topics failed)."""
        self._interrupted.set()

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Deliver what is in flight, stop the delivery poller, leave the consumer group."""
        if self._closed.is_set():
            return
        if self._producer is not None:
            self._producer.flush(timeout)
        self._closed.set()
        if self._poller is not None:
            self._poller.join(timeout)
        if self._consumer is not None:
            self._consumer.close()
        # Drop the clients now, so none outlives a mock cluster torn down right after.
        self._producer = None
        self._consumer = None


def _regex_escape(text: str) -> str:
    import re

    return re.escape(text)


def run_applier(
    spec: Any,
    applier: Any,
    *,
    stop: threading.Event,
    stream: Callable[..., Any],
    stats: Any,
    until_caught_up: bool = False,
    idle_timeout: float = 2.0,
    bootstrap_servers: str | None = None,
    group_id: str | None = None,
    capture: bool = True,
    heartbeat_interval: float = 5.0,
    config: Mapping[str, Any] | None = None,
) -> Any:
    """Run the distributed mode in this process: optionally the capture producing into Kafka,
    and the consumer-group applier (`stream(spec, applier, transport, ...)` applies and acks).

    `config` holds librdkafka settings for both clients.
    """
    from cdc.capture import Capture, CaptureConfig

    settings = dict(config or {})
    bootstrap_servers = bootstrap_servers or settings.pop("bootstrap.servers", None)
    settings.pop("bootstrap.servers", None)
    if not bootstrap_servers:
        raise KafkaTransportError("the Kafka transport needs bootstrap servers (--bootstrap-servers)")
    topics = tuple(spec.topics())
    producer = KafkaTransport(KafkaConfig(
        bootstrap_servers=bootstrap_servers, topic_prefix=spec.topic_prefix, producer=settings,
    ))
    consumer = KafkaTransport(KafkaConfig(
        bootstrap_servers=bootstrap_servers, topic_prefix=spec.topic_prefix, topics=topics,
        group_id=group_id or f"strangler-{spec.name}", consumer=settings, max_poll_records=spec.batch_size,
    ))
    cap: Capture | None = None
    if capture:
        cap = Capture(
            CaptureConfig(dsn=spec.source_url or "", slot=spec.slot_name, publication=spec.publication_name,
                          server_name=spec.topic_prefix, max_batch_events=spec.batch_size,
                          heartbeat_interval=heartbeat_interval, read_timeout=0.2),
            producer,
            on_error=lambda exc: consumer.interrupt(),
        )

    def health() -> None:
        if cap is not None and cap.error is not None:
            raise cap.error

    try:
        if cap is not None:
            cap.start()
        return stream(spec, applier, consumer, stop=stop, until_caught_up=until_caught_up,
                      idle_timeout=idle_timeout, health=health, stats=stats)
    finally:
        try:
            if cap is not None:
                cap.stop()
                try:
                    cap.join(timeout=10)
                finally:
                    cap.close()
        finally:
            producer.close()
            consumer.close()
            del producer, consumer
