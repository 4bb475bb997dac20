"""Fences: a position in the source's WAL that a running applier can be waited past.

The write cutover holds the write routes, then takes a fence on the legacy database
(`emit_fence`): a transactional logical message `strangler.fence` whose position every
transaction committed before the call precedes, and every one committed after the call
follows. The capture delivers the fence's (otherwise empty) transaction like any other, so
the applier's checkpoint moves past the fence even when nothing else is written. The runner
then waits (`wait_applied`, polling every few milliseconds: the wait is inside the write pause)
until the applier of the spec has applied that far (`applied_lsn`), and switches ownership from
that position on (`set_ownership`, in `cdc.ownership`, re-exported here).

Positions are PostgreSQL LSNs as integers (`cdc.apply.format_lsn` prints them). The fence
returned is the end of the message's WAL record, which is at or before its transaction's commit
record; the applier's checkpoint reaches at least the commit once the fence's transaction is
applied. A fence needs the in-process capture (`cdc run`, memory transport), where the
checkpoint follows one totally ordered stream.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg2
import psycopg2.errors

from cdc.apply import format_lsn, parse_lsn
from cdc.capture import FENCE_PREFIX
from cdc.database import Connections, connect, one_line
from cdc.exceptions import CDCError
from cdc.ownership import ownership_state, probe_ownership, set_ownership
from common.waiting import TimedOut, wait_until

__all__ = [
    "FENCE_PREFIX",
    "FenceTimeout",
    "applied_lsn",
    "emit_fence",
    "fence_through",
    "ownership_state",
    "probe_ownership",
    "set_ownership",
    "wait_applied",
]

POLL_INTERVAL = 0.005


class FenceTimeout(CDCError):
    """The applier did not apply past a fence in time; the message says where it is and what to do."""


def emit_fence(source_url: str, label: str, *, conn: Any = None) -> int:
    """Write a fence into the source's WAL and return its position.

    Every transaction committed on the source before this call commits before the returned
    position; the applier's `applied_lsn` reaches it once the fence's transaction is applied.
    `label` travels in the message (e.g. the cutover journal's step), for whoever reads the WAL.
    `conn`: an open transactional connection to the source to use (and leave open), e.g. from
    `cdc.database.Connections`.
    """
    own = conn is None
    if own:
        conn = connect(source_url, "source")
    try:
        with conn, conn.cursor() as cur:
            # Flushed at commit whatever the server's setting: a walsender sends only flushed WAL,
            # so with synchronous_commit off the fence (and the writes before it) would wait for
            # the WAL writer (wal_writer_delay, 200 ms by default) before any applier could see it.
            cur.execute("SET LOCAL synchronous_commit = on")
            cur.execute("SELECT pg_logical_emit_message(true, %s, %s)::text", (FENCE_PREFIX, label))
            lsn = parse_lsn(cur.fetchone()[0])
    except psycopg2.Error as exc:
        raise CDCError(f"cannot write a fence on the source database: {one_line(exc)} (the source needs "
                       "wal_level = logical; `strangler cdc check` says what else is missing)") from exc
    finally:
        if own:
            conn.close()
    return lsn


def _progress(cur: Any, name: str) -> tuple[int, bool, float | None]:
    """(applied position, whether the applier has a checkpoint with its snapshot done, seconds since it moved)."""
    try:
        cur.execute(
            "SELECT commit_lsn, COALESCE((snapshot ->> 'done')::boolean, false), "
            "extract(epoch FROM clock_timestamp() - updated_at)::float8 FROM strangler.checkpoint WHERE name = %s",
            (name,),
        )
    except psycopg2.errors.UndefinedTable:
        return 0, False, None  # no applier has opened this target yet (autocommit: nothing to roll back)
    row = cur.fetchone()
    if row is None:
        return 0, False, None
    return int(row[0]), bool(row[1]), float(row[2])


def _open(target_url: str) -> Any:
    conn = connect(target_url, "target")
    conn.set_session(readonly=True, autocommit=True)
    return conn


def applied_lsn(target_url: str, name: str) -> int:
    """Where the applier of spec `name` is: every source transaction committing before this position is applied.

    Heartbeats and fences move it too. 0 while no applier has a checkpoint there or the initial snapshot is
    still copying (the target then holds no consistent state to be past anything)."""
    try:
        conn = _open(target_url)
        try:
            with conn.cursor() as cur:
                lsn, done, _ = _progress(cur, name)
        finally:
            conn.close()
    except psycopg2.Error as exc:
        raise CDCError(f"cannot read the applier's position from the target: {one_line(exc)}") from exc
    return lsn if done else 0


def wait_applied(target_url: str, name: str, lsn: int, timeout: float, *, conn: Any = None) -> float:
    """Wait until the applier of spec `name` has applied past `lsn`; returns the seconds waited.

    Raises `FenceTimeout` after `timeout` seconds, naming where the applier is and how far behind.
    `conn`: an open autocommit connection to the target to poll on (and leave open)."""
    start = time.monotonic()
    last: list[tuple[int, bool, float | None]] = []
    own = conn is None
    try:
        if own:
            conn = _open(target_url)
        try:
            with conn.cursor() as cur:
                def past() -> bool:
                    last[:] = [_progress(cur, name)]
                    applied, done, _ = last[0]
                    return done and applied >= lsn

                wait_until(past, timeout, POLL_INTERVAL, what=f"the applier of {name!r} to pass {format_lsn(lsn)}")
        finally:
            if own:
                conn.close()
    except TimedOut:
        raise FenceTimeout(_behind(name, lsn, timeout, *last[-1])) from None
    except psycopg2.Error as exc:
        raise CDCError(f"cannot read the applier's position from the target: {one_line(exc)}") from exc
    return time.monotonic() - start


def fence_through(spec: Any, label: str, timeout: float, *, connections: Connections | None = None) -> float:
    """Write a fence on `spec`'s source and wait until its applier has applied it; returns the
    seconds waited: how far behind the stream is now, measured rather than read off its last change.
    `connections`: where to take (and leave) the two connections, already open or not."""
    if connections is None:
        return wait_applied(spec.target_url, spec.name, emit_fence(spec.source_url, label), timeout)
    lsn = emit_fence(spec.source_url, label, conn=connections.get(spec.source_url))
    return wait_applied(spec.target_url, spec.name, lsn, timeout, conn=connections.get(spec.target_url, autocommit=True))


def _behind(name: str, lsn: int, timeout: float, applied: int, done: bool, idle: float | None) -> str:
    run = f"is `strangler cdc run --spec ...` for spec {name!r} (slot strangler_{name}) running?"
    if idle is None:
        return f"the applier of {name!r} has no checkpoint in the target after {timeout:g}s waiting for fence {format_lsn(lsn)}: {run}"
    if not done:
        return (f"the applier of {name!r} is still copying its initial snapshot after {timeout:g}s waiting for fence "
                f"{format_lsn(lsn)}: let `cdc run` finish the copy (`strangler cdc status`), then cut over")
    return (f"the applier of {name!r} is at {format_lsn(applied)}, {lsn - applied} bytes of WAL behind fence "
            f"{format_lsn(lsn)} after {timeout:g}s (its checkpoint last moved {idle:.1f}s ago): {run} "
            "`strangler cdc status` shows its lag; retry once it has caught up")
