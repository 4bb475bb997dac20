"""Streaming capture: pgoutput messages from the slot become change events on a transport.

`EventBuilder` is the pure core (relation cache, transaction state, rows to events);
`Capture` is the I/O shell: it reads the replication stream, publishes bounded batches,
emits heartbeats when idle and moves the slot's flush position only past batches the
applier has acknowledged.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg2.extensions

from cdc.database import connect
from cdc.events import UNAVAILABLE, ChangeEvent, Column, Source
from cdc.exceptions import CDCError
from cdc.pgoutput import (
    TYPE_NAMES,
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputError,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    Update,
    pg_time_to_unix_ms,
)
from cdc.replication import PsycopgReplicationStream, ReplicationError, ReplicationStream
from cdc.textrow import RowLayout, TextRow
from cdc.transport import MemoryTransport, Transport, TransportClosedError

__all__ = ["FENCE_PREFIX", "HEARTBEAT_PREFIX", "Capture", "CaptureConfig", "CaptureStats", "EventBuilder", "pgoutput_options"]

HEARTBEAT_PREFIX = "strangler.heartbeat"
# A fence (`cdc.fence`): a transactional message whose transaction, like a heartbeat, moves the
# applier's checkpoint past it even when nothing else is written.
FENCE_PREFIX = "strangler.fence"

KeyLookup = Callable[[str, str], "tuple[str, ...] | None"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureConfig:
    """Settings of one capture: where to read, how big a batch may get, when to heartbeat."""

    dsn: str
    slot: str
    publication: str
    server_name: str = "legacy"
    max_batch_events: int = 2000
    heartbeat_interval: float = 10.0
    status_interval: float = 10.0
    read_timeout: float = 1.0
    max_reconnects: int = 5

    def __post_init__(self) -> None:
        if self.max_batch_events < 1:
            raise CDCError(f"max_batch_events must be at least 1, got {self.max_batch_events}")
        if self.heartbeat_interval <= 0:
            raise CDCError(f"heartbeat_interval must be positive, got {self.heartbeat_interval}")


def pgoutput_options(publication: str, *, server_version: int = 160000) -> dict[str, str]:
    """Options of START_REPLICATION: protocol 2, our publication, logical messages (heartbeats),
    and on PostgreSQL 16+ `origin 'none'` so changes written by an applier are not captured
    (older servers send an Origin message in such transactions; `EventBuilder` drops them)."""
    options = {"proto_version": "2" if server_version >= 140000 else "1", "publication_names": publication}
    if server_version >= 140000:
        options["messages"] = "true"
    if server_version >= 160000:
        options["origin"] = "none"
    return options


class _Table:
    __slots__ = ("columns", "key_names", "layout", "schema", "single_key", "name")

    def __init__(self, relation: Relation, key_names: tuple[str, ...] | None) -> None:
        self.schema = relation.namespace
        self.name = relation.name
        self.layout = RowLayout(relation.columns)
        names = self.layout.names
        if not key_names:
            key_names = tuple(c.name for c in relation.columns if c.is_key)
        missing = [k for k in key_names if k not in names]
        if not key_names or missing:
            raise CDCError(
                f"table {self.schema}.{self.name} has no usable key columns in the stream; add a primary "
                f"key or set REPLICA IDENTITY FULL on it"
            )
        self.key_names = tuple(key_names)
        self.single_key = key_names[0] if len(key_names) == 1 else None
        key_set = set(key_names)
        self.columns = tuple(
            Column(c.name, TYPE_NAMES.get(c.type_oid, "text"), optional=c.name not in key_set, key=c.name in key_set)
            for c in relation.columns
        )

    def row(self, values: TupleData) -> TextRow:
        """A full row image, converted to Python values as they are read."""
        return TextRow(self.layout, values)

    def key(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The key columns of a row image."""
        if self.single_key is not None:
            return {self.single_key: row[self.single_key]}
        return {name: row[name] for name in self.key_names}

    def key_of(self, values: TupleData) -> dict[str, Any]:
        """The key columns of a tuple (an old-key tuple carries only those)."""
        return self.key(TextRow(self.layout, values))


class EventBuilder:
    """Pure core of the capture: pgoutput messages in, change events out.

    `key_columns(schema, table)` names a table's primary key (None: use the replica-identity
    columns the Relation message flags). A primary-key change becomes a delete of the old key
    followed by a create of the new one, as Debezium does. A transaction that carries a
    replication origin (written by an applier) yields no events, as with `origin 'none'`.
    """

    def __init__(
        self,
        *,
        server_name: str,
        database: str,
        key_columns: KeyLookup | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.server_name = server_name
        self.database = database
        self._key_columns = key_columns or (lambda schema, table: None)
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._tables: dict[int, _Table] = {}
        self._sources: dict[tuple[int, int], Source] = {}
        self.xid: int | None = None
        self.commit_lsn: int | None = None
        self.commit_ms = 0
        self.in_transaction = False
        self.replayed = False

    # -- transaction boundaries ----------------------------------------------------------------

    def begin(self, message: Begin) -> None:
        self.xid = message.xid
        self.commit_lsn = message.final_lsn
        self.commit_ms = pg_time_to_unix_ms(message.commit_time)
        self.in_transaction = True
        self.replayed = False

    def origin(self, message: Origin) -> None:
        """The transaction was replayed from elsewhere (our applier): none of it is captured."""
        self.replayed = True

    def commit(self, message: Commit) -> None:
        self.in_transaction = False

    def relation(self, message: Relation) -> None:
        self._tables[message.oid] = _Table(message, self._key_columns(message.namespace, message.name))

    def table(self, oid: int) -> _Table:
        try:
            return self._tables[oid]
        except KeyError:
            raise PgOutputError(f"change for relation {oid} arrived before its Relation message") from None

    # -- changes -------------------------------------------------------------------------------

    def _source(self, table: _Table, lsn: int) -> Source:
        return Source(
            name=self.server_name, db=self.database, schema=table.schema, table=table.name,
            lsn=lsn, commit_lsn=self.commit_lsn, tx_id=self.xid, ts_ms=self.commit_ms, snapshot="false",
        )

    def change(self, message: Insert | Update | Delete | Truncate, lsn: int) -> list[ChangeEvent]:
        """The events of one change message at WAL position `lsn`."""
        if self.replayed:
            return []
        now = self._clock_ms()
        if isinstance(message, Insert):
            table = self._tables.get(message.relation_oid) or self.table(message.relation_oid)
            after = table.row(message.new)
            key = table.key(after)
            source = Source(self.server_name, self.database, table.schema, table.name, lsn, self.commit_lsn,
                            self.xid, self.commit_ms, "false")
            return [ChangeEvent("c", source, key, None, after, now, table.columns)]
        if isinstance(message, Update):
            table = self._tables.get(message.relation_oid) or self.table(message.relation_oid)
            after: Mapping[str, Any] = table.row(message.new)
            key = table.key(after)
            source = Source(self.server_name, self.database, table.schema, table.name, lsn, self.commit_lsn,
                            self.xid, self.commit_ms, "false")
            if message.old is None:
                return [ChangeEvent("u", source, key, dict(key), after, now, table.columns)]
            if message.old_kind == "O":
                before = table.row(message.old)
                if UNAVAILABLE in message.new:
                    # With REPLICA IDENTITY FULL the old row carries unchanged TOASTed values too.
                    after = {name: before.get(name, UNAVAILABLE) if value is UNAVAILABLE else value
                             for name, value in after.items()}
            else:
                before = table.key_of(message.old)
            old_key = table.key(before)
            if old_key != key:
                return [
                    ChangeEvent("d", source, old_key, before, None, now, table.columns),
                    ChangeEvent("c", source, key, None, after, now, table.columns),
                ]
            return [ChangeEvent("u", source, key, before, after, now, table.columns)]
        if isinstance(message, Delete):
            table = self.table(message.relation_oid)
            before = table.row(message.old) if message.old_kind == "O" else table.key_of(message.old)
            key = table.key(before)
            return [ChangeEvent("d", self._source(table, lsn), key, before, None, now, table.columns)]
        events = []
        for oid in message.relation_oids:
            table = self.table(oid)
            events.append(ChangeEvent("t", self._source(table, lsn), None, None, None, now, table.columns))
        return events


@dataclass(slots=True)
class CaptureStats:
    """Counters a status command or a test reads (updated by the capture thread only)."""

    messages: int = 0
    events: int = 0
    transactions: int = 0
    batches: int = 0
    heartbeats_sent: int = 0
    heartbeats_seen: int = 0
    fences_seen: int = 0
    flushed_lsn: int = 0
    last_commit_lsn: int = 0
    last_commit_ms: int = 0
    reconnects: int = 0


class _Pending:
    __slots__ = ("done", "flush_lsn")

    def __init__(self, flush_lsn: int | None, done: bool = False) -> None:
        self.flush_lsn = flush_lsn
        self.done = done


def _heartbeat_ms(content: bytes) -> int | None:
    """The source's clock (ms since the epoch) our heartbeat carries; None for another content."""
    try:
        return int(content)
    except ValueError:
        return None


class Capture:
    """Reads the slot and publishes change events in bounded batches.

    Run it with `run(stop_event)` in a thread you own, or `start()` / `stop()` / `join()`
    (`on_error` is called from the capture thread when it fails).
    Seams: `stream` (the replication connection), `heartbeat` (emits the heartbeat message on
    the source), `key_columns` (primary keys by table).
    """

    def __init__(
        self,
        config: CaptureConfig,
        transport: Transport,
        *,
        stream: ReplicationStream | None = None,
        heartbeat: Callable[[], None] | None = None,
        key_columns: KeyLookup | None = None,
        database: str | None = None,
        server_version: int | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.config = config
        self.transport = transport
        self.stats = CaptureStats()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stream = stream or PsycopgReplicationStream(
            config.dsn, status_interval=config.status_interval, wakeup_fd=self._wake_r
        )
        self._conn: psycopg2.extensions.connection | None = None
        if heartbeat is None or key_columns is None or database is None or server_version is None:
            self._conn = connect(config.dsn)
            self._conn.autocommit = True
        self._heartbeat = heartbeat or self._emit_heartbeat
        conn = self._conn
        self._server_version = server_version or (conn.server_version if conn is not None else 160000)
        self._builder = EventBuilder(
            server_name=config.server_name,
            database=database or (conn.info.dbname if conn is not None else ""),
            key_columns=key_columns or self._primary_key,
        )
        self._pending: collections.deque[_Pending] = collections.deque()
        self._keepalive_every = min(config.status_interval, 5.0)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._healthy = False
        self._on_error = on_error
        self.error: BaseException | None = None

    # -- seams' defaults -----------------------------------------------------------------------

    def _emit_heartbeat(self) -> None:
        assert self._conn is not None
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT pg_logical_emit_message(false, %s, (extract(epoch FROM clock_timestamp()) * 1000)::bigint::text)",
                (HEARTBEAT_PREFIX,),
            )

    def _primary_key(self, schema: str, table: str) -> tuple[str, ...] | None:
        assert self._conn is not None
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i "
                "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                "WHERE i.indrelid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass AND i.indisprimary",
                (schema, table),
            )
            row = cur.fetchone()
        return tuple(row[0]) if row and row[0] else None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Run in a background thread owned by this object (see `stop`, `join`, `error`)."""
        self._thread = threading.Thread(target=self._run_catching, name=f"capture-{self.config.slot}", daemon=True)
        self._thread.start()

    def _run_catching(self) -> None:
        try:
            self.run(self._stop)
        except TransportClosedError as exc:
            if not self._stop.is_set():
                self._failed(exc)
        except BaseException as exc:  # surfaced through .error / join() / on_error
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        if self._on_error is not None:
            self._on_error(exc)

    def stop(self) -> None:
        self._stop.set()
        self._wake()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self._stream.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # pipe full (a wakeup is already pending) or closed

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Stream until `stop` is set. Raises CDCError subclasses on stream or decoding failures.

        A lost replication connection is reopened (up to `config.max_reconnects` times in a row,
        with growing pauses): the server resends everything after the slot's flush position,
        and the applier's position guard makes the repeats no-ops.
        """
        failures = 0
        while True:
            try:
                self._stream_until(stop)
                return
            except ReplicationError:
                self._stream.close()
                failures = 0 if self._healthy else failures + 1
                if stop.is_set() or failures > self.config.max_reconnects:
                    raise
                self.stats.reconnects += 1
                stop.wait(min(0.25 * 2**failures, 5.0))
                if stop.is_set():
                    return

    def _stream_until(self, stop: threading.Event) -> None:
        config = self.config
        self._healthy = False
        self._stream.start(config.slot, pgoutput_options(config.publication, server_version=self._server_version))
        decoder = Decoder()
        builder = self._builder
        builder.in_transaction = False
        stats = self.stats
        chunk: list[Any] = []
        last_activity = time.monotonic()
        active = False
        read = self._stream.read
        feed = decoder.feed
        change = builder.change
        pending = self._pending
        max_batch = config.max_batch_events
        try:
            while not stop.is_set():
                raw = read(config.read_timeout)
                if raw is None:
                    now = time.monotonic()
                    if active:
                        last_activity, active = now, False
                    elif now - last_activity >= config.heartbeat_interval and not builder.in_transaction:
                        self._heartbeat()
                        stats.heartbeats_sent += 1
                        last_activity = now
                    self._flush_acks()
                    continue
                active = True
                stats.messages += 1
                message = feed(raw.payload)
                if isinstance(message, (Insert, Update, Delete, Truncate)):
                    chunk.extend(change(message, raw.data_start))
                    if len(chunk) >= max_batch:
                        self._publish(chunk, final=False)
                        chunk = []
                elif isinstance(message, Begin):
                    builder.begin(message)
                elif isinstance(message, Commit):
                    assert builder.commit_lsn is not None
                    position = chunk[-1].position if chunk else (builder.commit_lsn, builder.commit_lsn)
                    self._publish(chunk, final=True, flush_lsn=message.end_lsn, position=position)
                    chunk = []
                    builder.commit(message)
                    stats.transactions += 1
                    stats.last_commit_lsn = message.commit_lsn
                    stats.last_commit_ms = builder.commit_ms
                    self._healthy = True
                elif isinstance(message, Relation):
                    builder.relation(message)
                elif isinstance(message, LogicalMessage):
                    if message.prefix == HEARTBEAT_PREFIX and not message.transactional:
                        stats.heartbeats_seen += 1
                        # Through the transport behind every batch before it: once applied, the slot
                        # and the applier's checkpoint move just past its record.
                        at = message.lsn + 1
                        self._publish([], final=True, flush_lsn=at, position=(at, 0),
                                      heartbeat_ms=_heartbeat_ms(message.content))
                    elif message.prefix == FENCE_PREFIX:
                        stats.fences_seen += 1
                        if not message.transactional:
                            at = message.lsn + 1
                            self._publish([], final=True, flush_lsn=at, position=(at, 0))
                        # A transactional one: its transaction's commit (below) moves the checkpoint,
                        # to the commit's position, which is past the message.
                elif isinstance(message, (StreamStart, StreamStop, StreamCommit, StreamAbort)):
                    raise CDCError(
                        "the server streams in-progress transactions, which this capture does not "
                        "request; start replication without the 'streaming' option"
                    )
                elif isinstance(message, Origin):
                    builder.origin(message)
                elif isinstance(message, Type):
                    pass
                if pending and pending[0].done:
                    self._flush_acks()
        finally:
            self._stream.close()

    def _publish(
        self, events: list[Any], *, final: bool, flush_lsn: int | None = None, position: tuple[int, int] | None = None,
        heartbeat_ms: int | None = None,
    ) -> None:
        pending = _Pending(flush_lsn)
        self._pending.append(pending)
        wake = self._wake

        def on_durable() -> None:
            pending.done = True
            wake()

        self.stats.events += len(events)
        self.stats.batches += 1
        at = position or events[-1].position
        transport = self.transport
        if not isinstance(transport, MemoryTransport):
            transport.publish(events, at, on_durable, final=final, heartbeat_ms=heartbeat_ms)
            return
        # While the applier is behind, keep the replication connection alive (the server drops
        # a silent client after wal_sender_timeout) and pass on the acknowledgements that come.
        while not transport.publish(events, at, on_durable, final=final, heartbeat_ms=heartbeat_ms,
                                    timeout=self._keepalive_every):
            self._flush_acks()
            self._stream.send_feedback(self.stats.flushed_lsn)

    def _flush_acks(self) -> None:
        pending = self._pending
        advance = 0
        while pending and pending[0].done:
            entry = pending.popleft()
            flush_lsn = entry.flush_lsn
            if flush_lsn is not None:
                advance = flush_lsn
        if advance > self.stats.flushed_lsn:
            self._stream.send_feedback(advance)
            self.stats.flushed_lsn = advance
