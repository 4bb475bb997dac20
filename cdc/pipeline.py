"""`cdc run`: capture → transport → apply, with the initial snapshot first when needed.

Embedded mode (`transport="memory"`): this process owns the publication and the slot, copies
the tables inside the slot's exported snapshot (or resumes an interrupted copy), then streams
from the slot's consistent point through an in-process bounded queue into the applier, which
acknowledges each transaction to the slot only after committing it.

Distributed mode (`transport="kafka"`): the applier consumes `<prefix>.<schema>.<table>` topics
(written by our capture, `capture=True`, or by Debezium Connect) and commits offsets after apply.

The snapshot is copied with SQL pushdown when the whole mapping has exact SQL equivalents
(`COPY (SELECT mapped columns ...) TO STDOUT` piped into `COPY ... FROM STDIN`, chunked by key
ranges, the checkpoint committed with each chunk); otherwise rows are read by the capture's
`Snapshot`, mapped in Python and bulk-loaded with COPY. A stop (SIGINT/SIGTERM) during the copy
ends the run after the chunk in progress; the next run resumes after that chunk.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from cdc.apply import Applier, Checkpoint
from cdc.exceptions import CDCError
from cdc.mapping import RowMapper, sql_projection
from cdc.slot import wait_released
from cdc.spec import SyncSpec, TableSpec

__all__ = ["RunStats", "run", "snapshot_tables", "stream"]

ProgressFn = Callable[[str, int, int], None]
SNAPSHOT_CHUNK_ROWS = 100_000


@dataclass(slots=True)
class RunStats:
    """What a run did."""

    snapshot_rows: int = 0
    applied: int = 0
    dead_lettered: int = 0
    batches: int = 0
    position: tuple[int, int] = (0, 0)
    lags_ms: list[float] = field(default_factory=list)


def _q(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


# -- snapshot ---------------------------------------------------------------------------------------


def _column_types(conn: Any, table: TableSpec) -> dict[str, tuple[str, int | None]]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type, numeric_scale FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (table.source_schema, table.source_table),
        )
        return {r[0]: (r[1], r[2]) for r in cur.fetchall()}


class _Pipe:
    """A file-like bridge: the source's COPY TO writes, the target's COPY FROM reads."""

    def __init__(self) -> None:
        r, w = os.pipe()
        self.reader = os.fdopen(r, "rb", buffering=1 << 20)
        self.writer = os.fdopen(w, "wb", buffering=1 << 20)


class _Counting:
    """Counts the rows (lines) COPY reads through it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.rows = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.rows += data.count(b"\n")
        return data  # type: ignore[no-any-return]

    def readline(self, size: int = -1) -> bytes:
        data = self.raw.readline(size)
        self.rows += data.count(b"\n")
        return data  # type: ignore[no-any-return]


def _copy_pipe(source: Any, target: Any, select_sql: str, params: list[Any], target_sql: str) -> int:
    """`COPY (select) TO STDOUT` on `source` streamed into `target_sql` on `target`; rows copied."""
    pipe = _Pipe()
    reader = _Counting(pipe.reader)
    error: list[BaseException] = []
    query = source.cursor().mogrify(select_sql, params).decode()

    def produce() -> None:
        try:
            with source.cursor() as cur:
                cur.copy_expert(f"COPY ({query}) TO STDOUT", pipe.writer, size=1 << 18)
        except BaseException as exc:  # handed to the consumer thread
            error.append(exc)
        finally:
            pipe.writer.close()

    thread = threading.Thread(target=produce, name="snapshot-copy", daemon=True)
    thread.start()
    try:
        with target.cursor() as cur:
            cur.copy_expert(target_sql, reader, size=1 << 18)
    finally:
        pipe.reader.close()
        thread.join()
    if error:
        raise error[0]
    return reader.rows


def _pushdown_table(
    applier: Applier, source: Any, table: TableSpec, projection: tuple[list[str], list[str], list[Any]],
    state: dict[str, Any], progress: ProgressFn | None, chunk_rows: int, stop: threading.Event | None,
) -> int:
    exprs, where, params = projection
    src = _q(table.source_schema, table.source_table)
    key = _q(table.key[0])
    with source.cursor() as cur:
        cur.execute("SELECT greatest(reltuples::bigint, 0) FROM pg_class WHERE oid = %s::regclass", (f"{src}",))
        estimate = int(cur.fetchone()[0])
    last = (state["tables"].get(table.source) or [None])[0]
    cols = ", ".join(_q(c) for c in table.target_columns)
    target_sql = f"COPY {_q(table.target_schema, table.target_table)} ({cols}) FROM STDIN"
    done = before = int(state.get("rows", {}).get(table.source, 0))
    conn = applier.conn
    while True:
        with source.cursor() as cur:
            # Qualified: a bare ORDER BY name would sort by the ::text output column, not the key.
            lower = f"src.{key} > %s" if last is not None else "true"
            cur.execute(
                f"SELECT src.{key}::text FROM {src} AS src WHERE {lower} ORDER BY src.{key} OFFSET %s LIMIT 1",
                ([last] if last is not None else []) + [chunk_rows - 1],
            )
            row = cur.fetchone()
        upper = row[0] if row else None
        conds = list(where)
        args = list(params)
        if last is not None:
            conds.append(f"{key} > %s")
            args.append(last)
        if upper is not None:
            conds.append(f"{key} <= %s")
            args.append(upper)
        select = f"SELECT {', '.join(exprs)} FROM {src}" + (f" WHERE {' AND '.join(conds)}" if conds else "")
        try:
            copied = _copy_pipe(source, conn, select, args, target_sql)
        except psycopg2.Error as exc:
            conn.rollback()
            raise CDCError(f"snapshot copy of {table.source} into {table.target} failed: {str(exc).strip()}") from exc
        done += copied
        state["tables"][table.source] = [upper] if upper is not None else [last]
        state.setdefault("rows", {})[table.source] = done
        if upper is None:
            state.setdefault("completed", []).append(table.source)
        applier.commit_snapshot_state(state)
        if progress is not None:
            progress(table.source, done, max(done, estimate))
        if upper is None or (stop is not None and stop.is_set()):
            return done - before
        last = upper


def _python_table(
    applier: Applier, spec: SyncSpec, table: TableSpec, snapshot_name: str | None, state: dict[str, Any],
    progress: ProgressFn | None, chunk_rows: int, stop: threading.Event | None,
) -> int:
    from cdc.slot import describe_tables
    from cdc.snapshot import Snapshot

    conn = psycopg2.connect(spec.source_url)
    try:
        infos = describe_tables(conn, [table.source])
    finally:
        conn.close()
    resume = {table.source: state["tables"][table.source]} if state["tables"].get(table.source) else None
    snap = Snapshot(spec.source_url or "", infos, snapshot_name=snapshot_name, consistent_point=state["consistent_point"],
                    server_name=spec.topic_prefix, chunk_rows=chunk_rows, resume=resume,
                    progress=(lambda p: progress(p.table, p.rows_done, p.rows_estimated)) if progress else None)
    mapper = RowMapper(table)
    done = before = int(state.get("rows", {}).get(table.source, 0))
    chunks = snap.chunks()
    try:
        for chunk in chunks:
            rows = [r for r in (mapper.map(row) for row in chunk.rows) if r is not None]
            done += len(chunk.rows)
            if chunk.last_key is not None:
                state["tables"][table.source] = list(chunk.last_key)
            state.setdefault("rows", {})[table.source] = done
            if chunk.done:
                state.setdefault("completed", []).append(table.source)
            applier.copy_rows(table, rows, snapshot=state, position=(state["consistent_point"], 0))
            if stop is not None and stop.is_set():
                break
    finally:
        chunks.close()
    return done - before


def snapshot_tables(
    applier: Applier, spec: SyncSpec, snapshot_name: str | None, state: dict[str, Any],
    *, progress: ProgressFn | None = None, chunk_rows: int = SNAPSHOT_CHUNK_ROWS, stop: threading.Event | None = None,
) -> int:
    """Copy every table not yet completed, inside `snapshot_name`; the checkpoint follows each chunk.

    Returns the rows copied by this call. Once `stop` is set it returns after the chunk in
    progress, the tables not all completed (the next `prepare` resumes after that chunk).
    """
    source = psycopg2.connect(spec.source_url)
    total = 0
    try:
        source.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
        with source.cursor() as cur:
            if snapshot_name is not None:
                cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
        for table in spec.tables:
            if table.source in state.get("completed", []):
                continue
            if stop is not None and stop.is_set():
                break
            projection = sql_projection(table, _column_types(source, table))
            if projection is not None:
                total += _pushdown_table(applier, source, table, projection, state, progress, chunk_rows, stop)
            else:
                total += _python_table(applier, spec, table, snapshot_name, state, progress, chunk_rows, stop)
        source.rollback()
    finally:
        source.close()
    return total


def _initial_state(consistent_point: int) -> dict[str, Any]:
    return {"consistent_point": consistent_point, "done": False, "tables": {}, "completed": [], "rows": {}}


def prepare(
    spec: SyncSpec, applier: Applier, *, progress: ProgressFn | None = None, chunk_rows: int = SNAPSHOT_CHUNK_ROWS,
    slot_wait: float = 30.0, stop: threading.Event | None = None,
) -> int:
    """Make sure the publication and slot exist and the snapshot is complete; returns rows copied.

    When `stop` is set during the copy, returns after the chunk in progress with the snapshot
    incomplete; the next call resumes it.
    """
    from cdc.slot import create_slot, ensure_publication, exported_snapshot

    if not spec.source_url:
        raise CDCError(f"{spec.path}: no source database; set source.url in the spec, STRANGLER_MONOLITH_DATABASE_URL, or --source-url")
    ensure_publication(spec.source_url, spec.publication_name, [t.source for t in spec.tables])
    checkpoint: Checkpoint = applier.checkpoint
    # A killed predecessor's walsender lingers until the server notices the dead connection.
    slot = wait_released(spec.source_url, spec.slot_name, slot_wait)
    if slot is not None and not checkpoint.snapshot:
        # The slot was created but nothing was recorded before a crash: start over.
        from cdc.slot import drop_slot

        drop_slot(spec.source_url, spec.slot_name, terminate=True)
        slot = None
    if slot is None:
        if checkpoint.snapshot_done:
            raise CDCError(
                f"replication slot {spec.slot_name} is gone but the target says its snapshot is done: changes since "
                f"were lost. Run `strangler cdc drop --spec {spec.path} --reset` and then `cdc run` to copy everything again."
            )
        with create_slot(spec.source_url, spec.slot_name) as created:
            state = _initial_state(created.consistent_point)
            applier.reset_targets(state)
            rows = snapshot_tables(applier, spec, created.snapshot_name, state, progress=progress,
                                   chunk_rows=chunk_rows, stop=stop)
    elif not checkpoint.snapshot_done:
        state = dict(checkpoint.snapshot)
        # The exported snapshot died with the crash: copy the rest as of a fresh snapshot; the
        # stream from the slot's older consistent point then brings those rows forward.
        with exported_snapshot(spec.source_url, f"{spec.slot_name}_resume") as fresh:
            rows = snapshot_tables(applier, spec, fresh.snapshot_name, state, progress=progress,
                                   chunk_rows=chunk_rows, stop=stop)
    else:
        return 0
    if any(t.source not in state.get("completed", []) for t in spec.tables):
        return rows  # stopped part-way
    state["done"] = True
    applier.save_checkpoint(position=(state["consistent_point"], 0), snapshot=state)
    return rows


# -- streaming --------------------------------------------------------------------------------------


def _take(batches: Iterator[Any], first: Any, pending: Callable[[], int], limit: int) -> list[Any]:
    """The first batch and whatever is already queued behind it, up to `limit` events."""
    taken = [first]
    size = len(first.events)
    while size < limit and pending() > 0:
        nxt = next(batches, None)
        if nxt is None:
            break
        taken.append(nxt)
        size += len(nxt.events)
    return taken


def stream(
    spec: SyncSpec,
    applier: Applier,
    transport: Any,
    *,
    stop: threading.Event,
    until_caught_up: bool = False,
    idle_timeout: float = 2.0,
    health: Callable[[], None] | None = None,
    stats: RunStats | None = None,
    record_lag: bool = False,
) -> RunStats:
    """Apply batches from `transport` until `stop` (or caught up); ack each after its commit."""
    stats = stats or RunStats()
    pending: Callable[[], int] = getattr(transport, "pending", lambda: 0)
    idle_since = time.monotonic()
    while not stop.is_set():
        got = False
        batches = transport.batches(0.2)
        for first in batches:
            group = _take(batches, first, pending, spec.batch_size)
            events = [e for b in group for e in b.events]
            got = got or any(b.heartbeat_ms is None for b in group)  # heartbeats alone are idleness
            beat = max((b.heartbeat_ms for b in group if b.heartbeat_ms is not None), default=0)
            result = applier.apply(events, position=max(b.position for b in group), source_ts_ms=beat)
            for b in group:
                b.ack()
            stats.applied += result.applied
            stats.dead_lettered += result.dead_lettered
            stats.batches += len(group)
            stats.position = applier.checkpoint.position
            if record_lag and events:
                now_ms = time.time() * 1000
                stats.lags_ms.extend(now_ms - e.source.ts_ms for e in events if e.op != "r")
            if stop.is_set() or pending() == 0:
                break
        if health is not None:
            health()
        now = time.monotonic()
        if got:
            idle_since = now
        elif until_caught_up and now - idle_since >= idle_timeout:
            break
    return stats


@contextlib.contextmanager
def _signals(stop: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(
    spec: SyncSpec,
    *,
    transport: str = "memory",
    bootstrap_servers: str | None = None,
    group_id: str | None = None,
    capture: bool = True,
    until_caught_up: bool = False,
    idle_timeout: float = 2.0,
    on_progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    heartbeat_interval: float = 5.0,
    kafka_config: Mapping[str, Any] | None = None,
    chunk_rows: int = SNAPSHOT_CHUNK_ROWS,
    record_lag: bool = False,
) -> RunStats:
    """Run the sync until stopped (SIGINT/SIGTERM or `stop`), or until caught up."""
    stop = stop or threading.Event()
    if transport not in ("memory", "kafka"):
        raise CDCError(f"unknown transport {transport!r}; use memory or kafka")
    stats = RunStats()
    in_process = transport == "memory"
    with _signals(stop), Applier(spec, ordered=in_process, in_process=in_process) as applier:
        if transport == "memory" or capture:
            stats.snapshot_rows = prepare(spec, applier, progress=on_progress, chunk_rows=chunk_rows, stop=stop)
        if stop.is_set():
            return stats
        try:
            if transport == "memory":
                return _run_memory(spec, applier, stop, until_caught_up, idle_timeout, heartbeat_interval, stats,
                                   record_lag)
            return _run_kafka(spec, applier, stop, until_caught_up, idle_timeout, heartbeat_interval, stats,
                              bootstrap_servers=bootstrap_servers, group_id=group_id, capture=capture,
                              kafka_config=kafka_config or {})
        finally:
            if in_process or capture:
                # Return once the server let go of the slot: `cdc status` right after says inactive
                # and the next run need not wait for it. Still held after the wait: the next run waits.
                with contextlib.suppress(CDCError, psycopg2.Error):
                    wait_released(spec.source_url or "", spec.slot_name, 10.0)


def _run_memory(
    spec: SyncSpec, applier: Applier, stop: threading.Event, until_caught_up: bool, idle_timeout: float,
    heartbeat_interval: float, stats: RunStats, record_lag: bool = False,
) -> RunStats:
    from cdc.capture import Capture, CaptureConfig
    from cdc.transport import MemoryTransport

    queue = MemoryTransport(max_batches=256)
    cap = Capture(
        CaptureConfig(dsn=spec.source_url or "", slot=spec.slot_name, publication=spec.publication_name,
                      server_name=spec.topic_prefix, max_batch_events=spec.batch_size,
                      heartbeat_interval=heartbeat_interval, read_timeout=0.2),
        queue,
    )

    def health() -> None:
        if cap.error is not None:
            raise cap.error

    cap.start()
    try:
        stream(spec, applier, queue, stop=stop, until_caught_up=until_caught_up, idle_timeout=idle_timeout,
               health=health, stats=stats, record_lag=record_lag)
    finally:
        cap.stop()
        queue.close()
        try:
            cap.join(timeout=10)
        finally:
            cap.close()
    return stats


def _ensure_topics(bootstrap_servers: str, topics: list[str], config: Mapping[str, Any]) -> None:
    """Create the spec's topics (one partition each: per-table order) so consumers see them at once."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    settings: dict[str, str | int | float | bool] = {"bootstrap.servers": bootstrap_servers}
    if "log_level" in config:
        settings["log_level"] = str(config["log_level"])
    admin = AdminClient(settings)
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except KafkaException as exc:
        raise CDCError(f"cannot reach Kafka at {bootstrap_servers}: {exc.args[0].str()}") from exc
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
            raise CDCError(f"cannot create Kafka topic {topic!r}: {exc.args[0].str()}") from exc


def _run_kafka(
    spec: SyncSpec, applier: Applier, stop: threading.Event, until_caught_up: bool, idle_timeout: float,
    heartbeat_interval: float, stats: RunStats, *, bootstrap_servers: str | None, group_id: str | None,
    capture: bool, kafka_config: Mapping[str, Any],
) -> RunStats:
    from cdc import kafka

    if bootstrap_servers:
        _ensure_topics(bootstrap_servers, spec.topics(), kafka_config)
    # Notice topics created after subscribing (e.g. by Debezium's first record) within seconds.
    kafka_config = {"topic.metadata.refresh.interval.ms": 2000, **kafka_config}
    if not bootstrap_servers and "bootstrap.servers" not in kafka_config and "test.mock.num.brokers" not in kafka_config:
        raise CDCError("--transport kafka needs --bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS)")
    return kafka.run_applier(  # type: ignore[attr-defined,no-any-return]
        spec, applier, stop=stop, until_caught_up=until_caught_up, idle_timeout=idle_timeout, stats=stats,
        bootstrap_servers=bootstrap_servers, group_id=group_id or f"strangler-{spec.name}",
        capture=capture, heartbeat_interval=heartbeat_interval, config=kafka_config, stream=stream,
    )
