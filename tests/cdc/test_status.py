"""`cdc status` against a real slot: lag in bytes and seconds, and the retained-WAL warning."""

from __future__ import annotations

from typing import Any

import psycopg2
import pytest

from cdc.apply import Applier, parse_lsn
from cdc.pipeline import run
from cdc.spec import SyncSpec
from cdc.status import SyncStatus, status
from cdc.verify import verify
from tests.cdc.apply_fixtures import (
    checkpoint_of, execute, legacy_and_target, query, running, seed, spec_for, wal_position,
)
from tests.support import wait_for

__all__ = ["legacy_and_target"]


def _catch_up(spec: SyncSpec) -> None:
    run(spec, until_caught_up=True, idle_timeout=0.5, heartbeat_interval=0.3)


def _under(st: SyncStatus, lag_bytes: int) -> SyncStatus | None:
    return st if st.lag_bytes is not None and st.lag_bytes < lag_bytes else None


def _retains(st: SyncStatus) -> list[str]:
    return [w for w in st.warnings if "retains" in w]


def test_lag_and_retained_wal_while_the_applier_is_stopped_and_after_it_caught_up(
    legacy_and_target: tuple[str, str]
) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 50)
    spec = spec_for(legacy, target)
    _catch_up(spec)
    execute(legacy, "UPDATE catalog_product SET stock = 99 WHERE id = 1")
    _catch_up(spec)
    _, applied_ms = checkpoint_of(target, spec)
    clock = lambda: applied_ms / 1000 + 42  # noqa: E731 - 42 s after the source time applied

    before = wal_position(legacy)
    seed(legacy, 2000, start=51)  # the applier is stopped
    written = wal_position(legacy) - before
    behind = status(spec, retained_warning=written // 2, now=clock)
    assert not behind.slot_active and behind.slot_exists
    # All of it is behind (less one byte: a flush position points just past a heartbeat's start).
    assert behind.lag_bytes is not None and behind.lag_bytes >= written - 1
    assert behind.lag_seconds == pytest.approx(42.0)
    assert behind.slot_retained_bytes is not None and behind.slot_retained_bytes >= written
    [warning] = _retains(behind)
    assert f"slot {spec.slot_name} retains" in warning and "KiB of WAL (over" in warning and "start the applier" in warning
    assert _retains(status(spec, now=clock)) == []  # under the default 1 GiB threshold

    with running(spec):
        # The applier's own writes add WAL too: caught up once a heartbeat after them is flushed.
        caught_up = wait_for(lambda: _under(status(spec, now=clock), written // 10), timeout=30, what="the lag to go down")
    assert caught_up.applied_position > behind.applied_position
    # Measured from the source time applied since: the insert of the 2000 rows, or a heartbeat.
    assert caught_up.lag_seconds is not None and caught_up.lag_seconds < behind.lag_seconds


def test_heartbeats_move_an_idle_sync_on_so_its_lag_stays_small(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 10)
    spec = spec_for(legacy, target)
    with running(spec):  # heartbeats after 0.5 s without changes
        wait_for(lambda: query(target, "SELECT count(*) FROM catalog.products") == [(10,)], timeout=30, what="snapshot")
        execute(legacy, "UPDATE catalog_product SET stock = 99 WHERE id = 1")
        wait_for(lambda: query(target, "SELECT stock FROM catalog.products WHERE id = 1") == [(99,)], timeout=30,
                 what="the change")
        change_lsn, change_ms = checkpoint_of(target, spec)
        assert change_ms > 0
        # Nothing changes on the source from here; heartbeats alone move the checkpoint on.
        wait_for(lambda: checkpoint_of(target, spec)[1] > change_ms, timeout=30, what="a heartbeat in the checkpoint")
    beat_lsn, beat_ms = checkpoint_of(target, spec)
    assert beat_lsn > change_lsn
    execute(legacy, "CREATE TABLE side_note (note text)")  # WAL after the last flush: not caught up
    an_hour_later = (change_ms + 3_600_000) / 1000
    st = status(spec, now=lambda: an_hour_later)
    assert st.applied_position[0] == beat_lsn
    assert st.lag_seconds == pytest.approx(an_hour_later - beat_ms / 1000)  # from the heartbeat, not the change
    assert st.lag_seconds is not None and st.lag_seconds < 3600
    assert verify(spec, wait=10).identical


def test_a_kafka_fed_applier_lags_by_its_applied_position_not_the_slot(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 10)
    spec = spec_for(legacy, target)
    _catch_up(spec)
    # A streamed change gives the checkpoint a source time (the snapshot alone may have none,
    # when the run stops before a heartbeat is applied), which the lag in seconds is measured from.
    execute(legacy, "UPDATE catalog_product SET stock = 99 WHERE id = 1")
    _catch_up(spec)
    before = wal_position(legacy)
    seed(legacy, 2000, start=11)  # the applier is stopped ...
    written = wal_position(legacy) - before
    # ... while a capture feeding Kafka acknowledged the slot once Kafka had the changes.
    end = wal_position(legacy)
    wait_for(lambda: query(legacy, "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (f"{end >> 32:X}/{end & 0xFFFFFFFF:X}",))
             == [(True,)], what="the WAL flushed")  # a slot advances only up to flushed WAL
    execute(legacy, "SELECT pg_replication_slot_advance(%s, pg_current_wal_flush_lsn())", (spec.slot_name,))
    # In process, a flushed slot means applied: the lag is counted from the slot's position, past
    # the 2000 rows (not from the applied one before them). WAL other work in the cluster wrote
    # since (autovacuum, a checkpoint's page images) is lag too, so the check is of where it is counted from.
    st = status(spec)
    confirmed = parse_lsn(st.slot_confirmed_flush_lsn)
    assert confirmed >= end and parse_lsn(st.applied_lsn) < end - written // 2
    assert st.lag_bytes == parse_lsn(st.source_lsn) - confirmed
    with Applier(spec, ordered=False) as kafka_applier:  # records that the slot does not follow it
        checkpoint = kafka_applier.checkpoint
        kafka_applier.save_checkpoint(position=checkpoint.position, snapshot=checkpoint.snapshot)
    st = status(spec)
    assert st.lag_bytes is not None and st.lag_bytes >= written - 1
    assert st.lag_seconds is not None and st.lag_seconds > 0


def test_a_reading_taken_while_the_applier_catches_up_is_never_torn(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 10)
    spec = spec_for(legacy, target)
    _catch_up(spec)
    execute(legacy, "UPDATE catalog_product SET stock = 99 WHERE id = 1")
    _catch_up(spec)
    behind_position = checkpoint_of(target, spec)
    seed(legacy, 500, start=11)  # the applier is stopped
    connected: list[str] = []

    def connect(url: str) -> Any:
        # The applier catches up between status's two reads: whichever is read second sees the
        # new state, so the slot (flushed only after the applier's commit) must be read first.
        connected.append(url)
        if len(connected) == 2:
            _catch_up(spec)
        return psycopg2.connect(url)

    st = status(spec, connect=connect)
    assert len(connected) == 2
    applied_lsn, _ = checkpoint_of(target, spec)
    assert applied_lsn > behind_position[0]
    # One picture: a slot flushed past the new changes never comes with the old checkpoint.
    assert st.applied_position[0] == applied_lsn, "the checkpoint was read before the slot"
