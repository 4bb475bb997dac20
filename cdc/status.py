"""Health of a sync: applied position, lag in bytes and seconds, slot retained WAL, dead letters, conflicts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg2

from cdc import conflicts, deadletter
from cdc.apply import format_lsn, load_checkpoint
from cdc.database import one_line
from cdc.exceptions import CDCError
from cdc.spec import SyncSpec

__all__ = ["DEFAULT_RETAINED_WARNING", "SyncStatus", "status"]

DEFAULT_RETAINED_WARNING = 1 << 30  # 1 GiB of WAL held back by the slot


@dataclass(slots=True)
class SyncStatus:
    """What `strangler cdc status` reports.

    `lag_bytes`: source WAL not yet behind the applied position (or, when the capture runs in
    the applier's process, the slot's flush position, which then follows the applier's commits);
    `lag_seconds`: how far behind the source's clock the applier is: the age of the last applied
    change's commit, or of the last heartbeat after it (0 once an in-process slot has flushed
    everything; None before anything streamed was applied); `slot_retained_bytes`: WAL the slot
    keeps on the source (a warning past the threshold).

    Heartbeats reach the applier in both transports (over Kafka through the heartbeat topic, see
    `cdc.kafka`), so an idle sync's lags stay small. Over Kafka from Debezium, whose heartbeats
    carry a time but no position, only the lag in seconds follows them.
    """

    spec: str
    slot: str
    applied_position: tuple[int, int]
    applied_lsn: str
    source_lsn: str | None
    lag_bytes: int | None
    lag_seconds: float | None
    slot_exists: bool
    slot_active: bool
    slot_confirmed_flush_lsn: str | None
    slot_retained_bytes: int | None
    snapshot: dict[str, Any]
    dead_letters: int
    # Legacy writes to service-owned columns not applied (`cdc.conflicts`); the latest few.
    conflicts: int = 0
    recent_conflicts: list[dict[str, Any]] = field(default_factory=list)
    # In force for the newest transactions: the latest `strangler.ownership` row, else the spec's.
    ownership: str = "off"
    ownership_from_lsn: str | None = None
    direction: str = "forward"
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["applied_position"] = list(self.applied_position)
        return data


def _lsn(text: str | None) -> int | None:
    if not text:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def status(
    spec: SyncSpec,
    *,
    retained_warning: int = DEFAULT_RETAINED_WARNING,
    connect: Callable[[str], Any] = psycopg2.connect,
    now: Callable[[], float] = time.time,
) -> SyncStatus:
    """Read the target's checkpoint and dead letters and the source's slot."""
    if not spec.target_url:
        raise CDCError(f"{spec.path}: no target database; give --target-url or set target.url in the spec")
    # The source first: the slot's flush position moves only after the applier committed, so a
    # checkpoint read after it is at least as new (read the other way round, an applier catching
    # up in between shows a flushed slot with an old checkpoint and its old lag in seconds).
    source_lsn = confirmed = restart = None
    exists = active = False
    if spec.source_url:
        try:
            source = connect(spec.source_url)
        except psycopg2.Error as exc:
            raise CDCError(f"cannot connect to the source database: {one_line(exc)}") from exc
        try:
            with source.cursor() as cur:
                cur.execute("SELECT pg_current_wal_lsn()::text")
                source_lsn = _lsn(cur.fetchone()[0])
                cur.execute(
                    "SELECT active, confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                    (spec.slot_name,),
                )
                row = cur.fetchone()
            if row is not None:
                exists, active = True, bool(row[0])
                confirmed, restart = _lsn(row[1]), _lsn(row[2])
        finally:
            source.close()
    try:
        target = connect(spec.target_url)
    except psycopg2.Error as exc:
        raise CDCError(f"cannot connect to the target database: {one_line(exc)}") from exc
    try:
        checkpoint = load_checkpoint(target, spec.name)
        with target.cursor() as cur:
            cur.execute("SELECT to_regclass('strangler.dead_letter') IS NOT NULL")
            dead = deadletter.count(cur, spec.name) if cur.fetchone()[0] else 0
            conflict_count = conflicts.count(cur, spec.name)
            recent = [c.to_dict() for c in conflicts.list_recent(cur, spec.name)] if conflict_count else []
            recorded = None
            cur.execute("SELECT to_regclass('strangler.ownership') IS NOT NULL")
            if cur.fetchone()[0]:
                cur.execute("SELECT enforced, from_lsn FROM strangler.ownership WHERE name = %s "
                            "ORDER BY from_lsn DESC, id DESC LIMIT 1", (spec.name,))
                recorded = cur.fetchone()
        target.rollback()
    finally:
        target.close()
    warnings: list[str] = []
    applied = checkpoint.position[0]
    # In process, the slot's flush position moves only past what the applier committed, and
    # heartbeats move it past WAL with no changes for us (the applier's own writes, other
    # databases' work). Over Kafka the capture acknowledges the slot once Kafka has a batch,
    # whether or not an applier consumed it: only the applied position counts.
    slot_done = confirmed if checkpoint.in_process else None
    done = max(applied, slot_done or 0)
    lag_bytes = max(0, source_lsn - done) if source_lsn is not None else None
    caught_up = slot_done is not None and source_lsn is not None and slot_done >= source_lsn
    lag_seconds: float | None = None
    if checkpoint.source_ts_ms:
        lag_seconds = 0.0 if caught_up else max(0.0, now() - checkpoint.source_ts_ms / 1000)
    retained = (source_lsn - restart) if (source_lsn is not None and restart is not None) else None
    if retained is not None and retained > retained_warning:
        warnings.append(
            f"slot {spec.slot_name} retains {_size(retained)} of WAL (over {_size(retained_warning)}): "
            "start the applier, or drop the slot with `strangler cdc drop` if this sync is abandoned"
        )
    if spec.source_url and not exists:
        warnings.append(f"slot {spec.slot_name} does not exist on the source: `strangler cdc run` creates it")
    if dead:
        warnings.append(f"{dead} dead-lettered event(s) in strangler.dead_letter")
    if conflict_count and spec.reverse:
        warnings.append(f"{conflict_count} service write(s) to legacy-owned columns recorded in the legacy database's "
                        "strangler.conflict and not applied: the service must not change those columns")
    elif conflict_count:
        warnings.append(f"{conflict_count} legacy write(s) to service-owned columns recorded in strangler.conflict "
                        "and not applied: find the writer that bypasses the façade")
    return SyncStatus(
        spec=spec.name, slot=spec.slot_name, applied_position=checkpoint.position,
        applied_lsn=format_lsn(applied), source_lsn=format_lsn(source_lsn) if source_lsn is not None else None,
        lag_bytes=lag_bytes, lag_seconds=lag_seconds, slot_exists=exists, slot_active=active,
        slot_confirmed_flush_lsn=format_lsn(confirmed) if confirmed is not None else None,
        slot_retained_bytes=retained, snapshot=dict(checkpoint.snapshot), dead_letters=dead,
        conflicts=conflict_count, recent_conflicts=recent,
        ownership=("enforced" if recorded[0] else "off") if recorded else spec.ownership,
        ownership_from_lsn=format_lsn(int(recorded[1])) if recorded else None, direction=spec.direction,
        warnings=warnings,
    )
