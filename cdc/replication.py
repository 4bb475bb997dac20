"""Thin shell over psycopg2's logical replication connection.

`ReplicationStream` is the seam the capture reads through (one small interface, injectable);
`PsycopgReplicationStream` is the real one. LSNs travel as ints everywhere in the package;
`parse_lsn` / `format_lsn` convert the `X/Y` text form PostgreSQL prints.
"""

from __future__ import annotations

import os
import select
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from cdc.database import check_url, safe_dsn
from cdc.exceptions import CDCError

__all__ = [
    "PsycopgReplicationStream",
    "RawMessage",
    "XLogData",
    "ReplicationError",
    "ReplicationStream",
    "format_lsn",
    "open_replication_connection",
    "parse_lsn",
]


class ReplicationError(CDCError):
    """The replication connection failed or the server refused a replication command."""


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> int."""
    try:
        high, low = text.split("/")
        return (int(high, 16) << 32) + int(low, 16)
    except ValueError as exc:
        raise CDCError(f"{text!r} is not an LSN; expected the X/Y hexadecimal form, e.g. '0/16B3748'") from exc


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class XLogData(Protocol):
    """One XLogData message as a stream returns it: its payload and the WAL position it starts at."""

    @property
    def payload(self) -> bytes: ...

    @property
    def data_start(self) -> int: ...


class RawMessage(NamedTuple):
    """One XLogData message: its payload and the WAL position it starts at (an `XLogData`)."""

    payload: bytes
    data_start: int
    wal_end: int
    send_time: Any = None


class ReplicationStream(Protocol):
    """What the capture needs from a replication connection."""

    def start(self, slot: str, options: Mapping[str, str], start_lsn: int = 0) -> None: ...

    def read(self, timeout: float) -> XLogData | None:
        """The next message, waiting at most `timeout` seconds (None when none came)."""

    def send_feedback(self, flush_lsn: int) -> None: ...

    def close(self) -> None: ...


def open_replication_connection(dsn: str) -> psycopg2.extras.LogicalReplicationConnection:
    """A logical replication connection whose session writes times in UTC.

    pgoutput formats values with the walsender session's settings: in UTC, a timestamptz's text
    (`... +00`) reads the same into any column type, so the applier can copy it as it is.
    """
    check_url(dsn, "source")
    try:
        options = psycopg2.extensions.parse_dsn(dsn).get("options", "")
        return psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection,
                                options=f"{options} -c TimeZone=UTC".strip())
    except psycopg2.Error as exc:
        raise ReplicationError(
            f"cannot open a replication connection to {safe_dsn(dsn)}: {str(exc).strip()}; the role needs "
            "the REPLICATION attribute and pg_hba.conf must allow replication connections"
        ) from exc


class PsycopgReplicationStream:
    """A replication stream over psycopg2's LogicalReplicationConnection.

    `wakeup_fd`, when given, is a pipe's read end: writing a byte to it makes a waiting `read`
    return early (so acknowledgements from another thread are sent promptly).
    """

    def __init__(self, dsn: str, *, status_interval: float = 10.0, wakeup_fd: int | None = None) -> None:
        self._dsn = dsn
        self._status_interval = status_interval
        self._wakeup_fd = wakeup_fd
        self._conn: psycopg2.extras.LogicalReplicationConnection | None = None
        self._cursor: psycopg2.extras.ReplicationCursor | None = None

    def start(self, slot: str, options: Mapping[str, str], start_lsn: int = 0) -> None:
        self._conn = open_replication_connection(self._dsn)
        self._cursor = self._conn.cursor()
        try:
            self._cursor.start_replication(
                slot_name=slot,
                decode=False,
                start_lsn=start_lsn,
                options=dict(options),
                status_interval=self._status_interval,
            )
        except psycopg2.Error as exc:
            self.close()
            raise ReplicationError(f"cannot start replication from slot {slot!r}: {str(exc).strip()}") from exc

    def read(self, timeout: float) -> XLogData | None:
        cursor = self._cursor
        if cursor is None:
            raise ReplicationError("the replication stream is not started; call start() first")
        try:
            message = cursor.read_message()
            if message is None:
                readers: list[Any] = [cursor]
                if self._wakeup_fd is not None:
                    readers.append(self._wakeup_fd)
                ready, _, _ = select.select(readers, [], [], max(0.0, timeout))
                if self._wakeup_fd is not None and self._wakeup_fd in ready:
                    os.read(self._wakeup_fd, 4096)
                message = cursor.read_message()
        except psycopg2.Error as exc:
            raise ReplicationError(f"replication stream failed: {str(exc).strip()}") from exc
        # psycopg2's ReplicationMessage as it is: copying it (and building its send_time
        # datetime) cost ~2% of the capture's time per message.
        return message  # type: ignore[no-any-return]

    def send_feedback(self, flush_lsn: int) -> None:
        if self._cursor is None:
            return
        try:
            self._cursor.send_feedback(write_lsn=flush_lsn, flush_lsn=flush_lsn, apply_lsn=flush_lsn, force=True)
        except psycopg2.Error as exc:
            raise ReplicationError(f"cannot send feedback to the server: {str(exc).strip()}") from exc

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
                self._cursor = None
