"""`cdc run`: capture → transport → apply, with the initial snapshot first when needed.

Embedded mode (`transport="memory"`): this process owns the publication and the slot, copies
the tables inside the slot's exported snapshot (or resumes an interrupted copy), then streams
from the slot's consistent point through an in-process bounded queue into the applier, which
acknowledges each transaction to the slot only after committing it.

Distributed mode (`transport="kafka"`): the applier consumes `<prefix>.<schema>.<table>` topics
(written by our capture, `capture=True`, or by Debezium Connect) and commits offsets after apply.

The copy itself is `cdc.snapshot.snapshot_tables` (chunked, the checkpoint committed with each
chunk). A stop (SIGINT/SIGTERM) during the copy ends the run after the chunk in progress; the
next run resumes after that chunk. A spec with `snapshot: never` (the reverse stream) copies
nothing and never empties the target's tables: the stream starts at the slot's creation.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from cdc.apply import Applier, Checkpoint
from cdc.exceptions import CDCError
from cdc.preflight import preflight, require
from cdc.slot import SlotState, wait_released
from cdc.snapshot import SNAPSHOT_CHUNK_ROWS, ProgressFn, snapshot_tables
from cdc.spec import SyncSpec

__all__ = ["RunStats", "prepare", "run", "stop_on_signals", "stream"]



@dataclass(slots=True)
class RunStats:
    """What a run did."""

    snapshot_rows: int = 0
    applied: int = 0
    dead_lettered: int = 0
    batches: int = 0
    position: tuple[int, int] = (0, 0)
    lags_ms: list[float] = field(default_factory=list)


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
    from cdc.slot import create_slot, ensure_publication, exported_snapshot, publication_exists

    if not spec.source_url:
        raise CDCError(f"{spec.path}: no source database; set source.url in the spec, STRANGLER_MONOLITH_DATABASE_URL, or --source-url")
    published_before = publication_exists(spec.source_url, spec.publication_name)
    ensure_publication(spec.source_url, spec.publication_name, [t.source for t in spec.tables])
    checkpoint: Checkpoint = applier.checkpoint
    # A killed predecessor's walsender lingers until the server notices the dead connection.
    slot = wait_released(spec.source_url, spec.slot_name, slot_wait)
    if spec.snapshot == "never":
        return _prepare_stream_only(spec, applier, slot, published_before)
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
        state: dict[str, Any] = {}
        try:
            with create_slot(spec.source_url, spec.slot_name) as created:
                state = _initial_state(created.consistent_point)
                applier.reset_targets(state)
                rows = snapshot_tables(applier, spec, created.snapshot_name, state, progress=progress,
                                       chunk_rows=chunk_rows, stop=stop)
        except BaseException:
            if not state.get("tables") and not state.get("completed"):
                # Nothing copied yet: take back what this run made on the source (a run that
                # copied chunks keeps its slot, so the next one resumes after them).
                _undo_first_run(spec, drop_publication=not published_before)
            raise
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


def _prepare_stream_only(spec: SyncSpec, applier: Applier, slot: SlotState | None, published_before: bool) -> int:
    """`snapshot: never`: a slot from now on (or the existing one), recorded as a finished snapshot."""
    from cdc.slot import create_slot

    checkpoint = applier.checkpoint
    if checkpoint.snapshot_done and slot is not None:
        return 0
    if slot is None:
        if checkpoint.snapshot_done:
            raise CDCError(
                f"replication slot {spec.slot_name} is gone but the target has a checkpoint of {spec.name!r}: the "
                f"source's changes since were not applied. Compare the two sides (`strangler verify --spec {spec.path}`), "
                f"repair what differs, then `strangler cdc drop --spec {spec.path} --reset` and `cdc run` again."
            )
        try:
            with create_slot(spec.source_url or "", spec.slot_name) as created:
                start = created.consistent_point
        except BaseException:
            _undo_first_run(spec, drop_publication=not published_before)
            raise
    else:
        # Created by a run that stopped before recording it: nothing was applied, stream from its start.
        start = slot.confirmed_flush_lsn or 0
    state = {"consistent_point": start, "done": True, "never": True, "tables": {}, "completed": [], "rows": {}}
    applier.save_checkpoint(position=(start, 0), snapshot=state)
    return 0


def _undo_first_run(spec: SyncSpec, *, drop_publication: bool) -> None:
    from cdc import slot

    source = spec.source_url or ""
    # Best effort: the run's own error is the one to report.
    with contextlib.suppress(CDCError, psycopg2.Error):
        slot.drop_slot(source, spec.slot_name, terminate=True)
        if drop_publication:
            slot.drop_publication(source, spec.publication_name)


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
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set `stop` on SIGINT/SIGTERM while the context is open (main thread only)."""
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
    preflight_wal_sample: float = 0.2,
) -> RunStats:
    """Run the sync until stopped (SIGINT/SIGTERM or `stop`), or until caught up."""
    stop = stop or threading.Event()
    if transport not in ("memory", "kafka"):
        raise CDCError(f"unknown transport {transport!r}; use memory or kafka")
    stats = RunStats()
    in_process = transport == "memory"
    if spec.source_url and spec.target_url:
        # `cdc check`'s checks, before anything is created on either side.
        require(preflight(spec, replication=in_process or capture, wal_sample_seconds=preflight_wal_sample))
    with stop_on_signals(stop), Applier(spec, ordered=in_process, in_process=in_process) as applier:
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


def _run_kafka(
    spec: SyncSpec, applier: Applier, stop: threading.Event, until_caught_up: bool, idle_timeout: float,
    heartbeat_interval: float, stats: RunStats, *, bootstrap_servers: str | None, group_id: str | None,
    capture: bool, kafka_config: Mapping[str, Any],
) -> RunStats:
    from cdc import kafka

    if bootstrap_servers:
        kafka.ensure_topics(bootstrap_servers, [*spec.topics(), kafka.heartbeat_topic(spec.topic_prefix)], kafka_config)
    # Notice topics created after subscribing (e.g. by Debezium's first record) within seconds.
    kafka_config = {"topic.metadata.refresh.interval.ms": 2000, **kafka_config}
    if not bootstrap_servers and "bootstrap.servers" not in kafka_config:
        raise CDCError("--transport kafka needs --bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS)")
    return kafka.run_applier(  # type: ignore[attr-defined,no-any-return]
        spec, applier, stop=stop, until_caught_up=until_caught_up, idle_timeout=idle_timeout, stats=stats,
        bootstrap_servers=bootstrap_servers, group_id=group_id or f"strangler-{spec.name}",
        capture=capture, heartbeat_interval=heartbeat_interval, config=kafka_config, stream=stream,
    )
