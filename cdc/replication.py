"""The logical replication connection the capture reads through.

`ReplicationStream` is the seam the capture reads through (one small interface, injectable);
`PsycopgReplicationStream` is the real one: the streaming protocol over libpq (psycopg 3's
`pq`), so that what the server is told was flushed is only ever what the capture confirmed.
`open_replication_connection` (psycopg2) serves the replication commands that are plain
queries, such as creating a slot. LSNs travel as ints everywhere in the package;
`parse_lsn` / `format_lsn` convert the `X/Y` text form PostgreSQL prints.
"""

from __future__ import annotations

import os
import select
import struct
import time
from collections.abc import Mapping
from typing import NamedTuple, Protocol

import psycopg
import psycopg2
import psycopg2.extensions
import psycopg2.extras
from psycopg import conninfo, pq

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
    send_time: int = 0  # microseconds since 2000-01-01 UTC, the server clock when sent


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
    """The replication stream over libpq (psycopg 3's `pq`), with its feedback owned here.

    The server is told only the position the reader confirmed through `send_feedback`, or a
    keepalive's WAL end when no transaction is open in the stream and everything read has been
    confirmed (an idle slot moves on). Transactions arrive in commit order, so one that began
    before a confirmed transaction starts with changes below the confirmed position; a driver
    that moves its flush position to the keepalive's WAL end whenever "the last message read is
    at or below what was flushed" (psycopg2 does) confirms, inside such a transaction, every
    transaction read since and not yet durable downstream, and a restart loses them.

    Standby status updates go out when the reader confirms, when a keepalive asks for a reply,
    and every `status_interval` seconds while reading. `wakeup_fd`, when given, is a pipe's read
    end: writing a byte to it makes a waiting `read` return early (so acknowledgements from
    another thread are sent promptly). `keepalives` counts the keepalives the server sent,
    `reply_requests` those of them that asked for a reply.
    """

    def __init__(self, dsn: str, *, status_interval: float = 10.0, wakeup_fd: int | None = None) -> None:
        self._dsn = dsn
        self._status_interval = status_interval
        self._wakeup_fd = wakeup_fd
        self._pgconn: pq.PGconn | None = None
        self._socket = -1
        self._slot: str | None = None
        self._flushed = 0
        self._read_to = 0
        self._in_transaction = False
        self._status_at = 0.0
        self.keepalives = 0
        self.reply_requests = 0

    def start(self, slot: str, options: Mapping[str, str], start_lsn: int = 0) -> None:
        self.close()
        self._pgconn = pgconn = _connect_replication(self._dsn)
        escaping = pq.Escaping(pgconn)
        # The replication grammar takes '...' literals with doubled quotes (not libpq's E'...').
        listed = ", ".join(
            f"{escaping.escape_identifier(name.encode()).decode()} '{value.replace(chr(39), chr(39) * 2)}'"
            for name, value in options.items()
        )
        command = f"START_REPLICATION SLOT {escaping.escape_identifier(slot.encode()).decode()} LOGICAL {format_lsn(start_lsn)}"
        if listed:
            command += f" ({listed})"
        try:
            result = pgconn.exec_(command.encode())
        except psycopg.Error as exc:
            self.close()
            raise ReplicationError(f"cannot start replication from slot {slot!r}: {_message(exc)}") from exc
        if result.status != pq.ExecStatus.COPY_BOTH:
            reason = (result.error_message or pgconn.error_message).decode(errors="replace").strip()
            self.close()
            raise ReplicationError(f"cannot start replication from slot {slot!r}: {reason}")
        self._socket = pgconn.socket
        if slot != self._slot:
            self._slot, self._flushed = slot, 0
        self._read_to, self._in_transaction = 0, False
        self._status_at = time.monotonic()

    def read(self, timeout: float) -> XLogData | None:
        pgconn = self._pgconn
        if pgconn is None:
            raise ReplicationError("the replication stream is not started; call start() first")
        waited = False
        try:
            while True:
                nbytes, data = pgconn.get_copy_data(1)
                if nbytes > 0:
                    kind = data[0]
                    if kind == _XLOG_DATA:
                        data_start, wal_end, send_time = _XLOG_HEADER.unpack_from(data, 1)
                        head = data[_XLOG_HEADER_END]
                        if head == _COMMIT:
                            self._in_transaction = False
                            (self._read_to,) = _LSN.unpack_from(data, _COMMIT_END_AT)
                        elif head == _BEGIN:
                            self._in_transaction = True
                        elif head == _MESSAGE and not self._in_transaction:
                            self._read_to = _LSN.unpack_from(data, _MESSAGE_LSN_AT)[0] + 1
                        return RawMessage(bytes(data[_XLOG_HEADER_END:]), data_start, wal_end, send_time)
                    if kind == _KEEPALIVE:
                        self.keepalives += 1
                        (wal_end,) = _LSN.unpack_from(data, 1)
                        if not self._in_transaction and self._flushed >= self._read_to and wal_end > self._flushed:
                            # Everything sent so far was read and confirmed, and no transaction is
                            # open: every one committing below `wal_end` has been sent (in commit
                            # order), so an idle slot can move to it.
                            self._flushed = wal_end
                        if data[_KEEPALIVE_REPLY]:
                            self.reply_requests += 1
                            self._send_status()
                        continue
                    raise ReplicationError(f"the server sent an unknown replication message {chr(kind)!r}")
                if nbytes == -1:
                    result = pgconn.get_result()
                    reason = (result.error_message if result is not None else b"") or pgconn.error_message
                    raise ReplicationError(
                        "the server ended the replication stream: "
                        f"{reason.decode(errors='replace').strip() or 'no reason given'}"
                    )
                # libpq's buffer is empty (it reads the socket only in consume_input, below), which
                # comes every few hundred messages even while the data never pauses.
                if time.monotonic() - self._status_at >= self._status_interval:
                    self._send_status()
                    continue  # flushing may have read input into libpq's buffer
                if waited:
                    return None
                readers = [self._socket] if self._wakeup_fd is None else [self._socket, self._wakeup_fd]
                ready, _, _ = select.select(readers, [], [], max(0.0, timeout))
                if self._wakeup_fd is not None and self._wakeup_fd in ready:
                    os.read(self._wakeup_fd, 4096)
                pgconn.consume_input()
                waited = True
        except psycopg.Error as exc:
            raise ReplicationError(f"replication stream failed: {_message(exc)}") from exc
        except (struct.error, IndexError) as exc:
            raise ReplicationError(f"the server sent a truncated replication message: {exc}") from exc

    def send_feedback(self, flush_lsn: int) -> None:
        if self._pgconn is None:
            return
        self._flushed = max(self._flushed, flush_lsn)
        try:
            self._send_status()
        except psycopg.Error as exc:
            raise ReplicationError(f"cannot send feedback to the server: {_message(exc)}") from exc

    def _send_status(self) -> None:
        """A standby status update: written, flushed and applied are all what the reader confirmed."""
        pgconn = self._pgconn
        assert pgconn is not None
        flushed = self._flushed
        clock = int((time.time() - _PG_EPOCH) * 1_000_000)
        pgconn.put_copy_data(_STATUS.pack(b"r", flushed, flushed, flushed, clock, 0))
        pgconn.flush()
        self._status_at = time.monotonic()

    def close(self) -> None:
        if self._pgconn is not None:
            try:
                self._pgconn.finish()
            finally:
                self._pgconn = None
                self._socket = -1


_XLOG_DATA = ord("w")
_KEEPALIVE = ord("k")
_XLOG_HEADER = struct.Struct(">QQq")  # after the kind byte: data start, WAL end, send time
_XLOG_HEADER_END = 1 + _XLOG_HEADER.size
_KEEPALIVE_REPLY = 1 + 8 + 8  # kind, WAL end, send time, then "reply requested"
_LSN = struct.Struct(">Q")
_BEGIN, _COMMIT, _MESSAGE = ord("B"), ord("C"), ord("M")  # pgoutput's first byte
_COMMIT_END_AT = _XLOG_HEADER_END + 1 + 1 + 8  # 'C', flags, commit LSN, then the end LSN
_MESSAGE_LSN_AT = _XLOG_HEADER_END + 1 + 1  # 'M', flags, then the message's LSN (outside a streamed transaction)
_STATUS = struct.Struct(">cQQQqB")  # 'r', written, flushed, applied, client clock, reply requested
_PG_EPOCH = 946_684_800.0  # 2000-01-01 UTC, PostgreSQL's epoch for protocol times


def _message(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _connect_replication(dsn: str) -> pq.PGconn:
    """A libpq connection in logical replication mode, its session in UTC (see `open_replication_connection`)."""
    check_url(dsn, "source")
    try:
        options = conninfo.conninfo_to_dict(dsn).get("options") or ""
        info = conninfo.make_conninfo(dsn, replication="database", options=f"{options} -c TimeZone=UTC".strip())
    except psycopg.Error as exc:
        raise ReplicationError(f"{safe_dsn(dsn)} is not a valid database URL: {_message(exc)}") from exc
    pgconn = pq.PGconn.connect(info.encode())
    if pgconn.status != pq.ConnStatus.OK:
        reason = pgconn.error_message.decode(errors="replace")
        pgconn.finish()
        raise ReplicationError(
            f"cannot open a replication connection to {safe_dsn(dsn)}: {' '.join(reason.split())}; the role needs "
            "the REPLICATION attribute and pg_hba.conf must allow replication connections"
        )
    return pgconn
