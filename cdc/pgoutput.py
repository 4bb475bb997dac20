"""Sans-io decoder of PostgreSQL's `pgoutput` logical replication protocol (versions 1 and 2).

`decode(payload, in_stream=...)` turns the bytes of one XLogData message into a frozen message
object; `Decoder` tracks whether it is inside a streamed-transaction block (where every change
carries its transaction id). Column values stay as the protocol sends them (`str` for text
format, `bytes` for binary, None for SQL NULL, `UNAVAILABLE` for an unchanged TOASTed value);
`convert_value(type_oid, text)` turns a text value into its Python value, by type OID.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from struct import Struct
from struct import error as struct_error
from typing import Any, Union

from cdc.events import UNAVAILABLE, Unavailable
from cdc.exceptions import CDCError

__all__ = [
    "Begin",
    "Commit",
    "Decoder",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "PG_EPOCH_MS",
    "PgOutputError",
    "Relation",
    "RelationColumn",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "Type",
    "TYPE_NAMES",
    "Update",
    "convert_value",
    "converter_for",
    "decode",
    "pg_time_to_unix_ms",
]

Datum = Union[str, bytes, None, Unavailable]
TupleData = tuple[Datum, ...]

# Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC), in milliseconds.
PG_EPOCH_MS = 946_684_800_000


class PgOutputError(CDCError):
    """A pgoutput message could not be decoded (corrupt, truncated or of an unknown kind)."""


def pg_time_to_unix_ms(pg_micros: int) -> int:
    """A pgoutput timestamp (microseconds since 2000-01-01 UTC) as Unix epoch milliseconds."""
    return PG_EPOCH_MS + pg_micros // 1000


@dataclass(frozen=True, slots=True)
class Begin:
    """Start of a transaction: its commit LSN is already known (final_lsn)."""

    final_lsn: int
    commit_time: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """End of a transaction."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(frozen=True, slots=True)
class Origin:
    """The replication origin the transaction came from (only sent with origin 'any')."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    """One column of a Relation message; flags bit 1 marks a replica-identity (key) column."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """Describes a table before the first change of it on this stream (and after DDL)."""

    xid: int | None
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class Type:
    """Describes a non-builtin data type used by a following Relation."""

    xid: int | None
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    xid: int | None
    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    """`old_kind` is 'K' (old key columns), 'O' (whole old row, REPLICA IDENTITY FULL) or None."""

    xid: int | None
    relation_oid: int
    old_kind: str | None
    old: TupleData | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    xid: int | None
    relation_oid: int
    old_kind: str
    old: TupleData


@dataclass(frozen=True, slots=True)
class Truncate:
    """options: bit 1 CASCADE, bit 2 RESTART IDENTITY."""

    xid: int | None
    options: int
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A `pg_logical_emit_message` record (sent when the 'messages' option is on)."""

    xid: int | None
    flags: int
    lsn: int
    prefix: str
    content: bytes

    @property
    def transactional(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int


Message = Union[
    Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate, LogicalMessage,
    StreamStart, StreamStop, StreamCommit, StreamAbort,
]

_U8 = Struct("!B")
_I16 = Struct("!h")
_I32 = Struct("!i")
_U32 = Struct("!I")
_BEGIN = Struct("!QqI")
_COMMIT = Struct("!BQQq")
_STREAM_COMMIT = Struct("!IBQQq")
_STREAM_START = Struct("!IB")
_STREAM_ABORT = Struct("!II")
_U64 = Struct("!Q")
_REL_COL_TAIL = Struct("!Ii")
_LEN = Struct("!i")


_unpack_len = _LEN.unpack_from


def _read_tuple(data: bytes, pos: int) -> tuple[TupleData, int]:
    """TupleData at `pos`: the values and the position after them (the decoder's hot loop)."""
    count = (data[pos] << 8) | data[pos + 1]
    pos += 2
    end_of_data = len(data)
    values: list[Datum] = [None] * count
    for i in range(count):
        kind = data[pos]
        if kind == 0x74:  # 't'
            (length,) = _unpack_len(data, pos + 1)
            start = pos + 5
            pos = start + length
            if length < 0 or pos > end_of_data:
                raise PgOutputError("text value runs past the end of the message")
            values[i] = data[start:pos].decode("utf-8")
        elif kind == 0x6E:  # 'n'
            pos += 1
        elif kind == 0x75:  # 'u'
            values[i] = UNAVAILABLE
            pos += 1
        elif kind == 0x62:  # 'b'
            (length,) = _unpack_len(data, pos + 1)
            start = pos + 5
            pos = start + length
            if length < 0 or pos > end_of_data:
                raise PgOutputError("binary value runs past the end of the message")
            values[i] = data[start:pos]
        else:
            raise PgOutputError(f"unknown tuple column kind {chr(kind)!r}")
    return tuple(values), pos


class _Reader:
    """Cursor over one message's bytes; every read is bounds-checked by struct/slicing."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 1

    def unpack(self, fmt: Struct) -> tuple[Any, ...]:
        values = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return values

    def u8(self) -> int:
        value: int = self.data[self.pos]
        self.pos += 1
        return value

    def i16(self) -> int:
        (value,) = _I16.unpack_from(self.data, self.pos)
        self.pos += 2
        return int(value)

    def u32(self) -> int:
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def i32(self) -> int:
        (value,) = _I32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def u64(self) -> int:
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> str:
        end = self.data.index(b"\x00", self.pos)
        text = self.data[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return text

    def raw(self, length: int) -> bytes:
        end = self.pos + length
        if length < 0 or end > len(self.data):
            raise PgOutputError(f"value of {length} bytes runs past the end of the message")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def tuple_data(self) -> TupleData:
        values, self.pos = _read_tuple(self.data, self.pos)
        return values

    def xid(self, in_stream: bool) -> int | None:
        return self.u32() if in_stream else None


def _begin(r: _Reader, in_stream: bool) -> Begin:
    final_lsn, commit_time, xid = r.unpack(_BEGIN)
    return Begin(final_lsn, commit_time, xid)


def _commit(r: _Reader, in_stream: bool) -> Commit:
    flags, commit_lsn, end_lsn, commit_time = r.unpack(_COMMIT)
    return Commit(flags, commit_lsn, end_lsn, commit_time)


def _origin(r: _Reader, in_stream: bool) -> Origin:
    return Origin(r.u64(), r.string())


def _relation(r: _Reader, in_stream: bool) -> Relation:
    xid = r.xid(in_stream)
    oid = r.u32()
    namespace = r.string()
    name = r.string()
    identity = chr(r.u8())
    count = r.i16()
    columns = []
    for _ in range(count):
        flags = r.u8()
        col_name = r.string()
        type_oid, modifier = r.unpack(_REL_COL_TAIL)
        columns.append(RelationColumn(flags, col_name, type_oid, modifier))
    return Relation(xid, oid, namespace, name, identity, tuple(columns))


def _type(r: _Reader, in_stream: bool) -> Type:
    xid = r.xid(in_stream)
    return Type(xid, r.u32(), r.string(), r.string())


def _insert(r: _Reader, in_stream: bool) -> Insert:
    xid = r.xid(in_stream)
    oid = r.u32()
    marker = r.u8()
    if marker != 0x4E:  # 'N'
        raise PgOutputError(f"insert: expected 'N' before the new tuple, got {chr(marker)!r}")
    return Insert(xid, oid, r.tuple_data())


def _update(r: _Reader, in_stream: bool) -> Update:
    xid = r.xid(in_stream)
    oid = r.u32()
    marker = chr(r.u8())
    old_kind: str | None = None
    old: TupleData | None = None
    if marker in ("K", "O"):
        old_kind = marker
        old = r.tuple_data()
        marker = chr(r.u8())
    if marker != "N":
        raise PgOutputError(f"update: expected 'N' before the new tuple, got {marker!r}")
    return Update(xid, oid, old_kind, old, r.tuple_data())


def _delete(r: _Reader, in_stream: bool) -> Delete:
    xid = r.xid(in_stream)
    oid = r.u32()
    marker = chr(r.u8())
    if marker not in ("K", "O"):
        raise PgOutputError(f"delete: expected 'K' or 'O' before the old tuple, got {marker!r}")
    return Delete(xid, oid, marker, r.tuple_data())


def _truncate(r: _Reader, in_stream: bool) -> Truncate:
    xid = r.xid(in_stream)
    count = r.i32()
    options = r.u8()
    oids = tuple(r.u32() for _ in range(count))
    return Truncate(xid, options, oids)


def _message(r: _Reader, in_stream: bool) -> LogicalMessage:
    # pgoutput sends the xid only for transactional messages inside a stream block.
    xid = r.xid(in_stream)
    flags = r.u8()
    lsn = r.u64()
    prefix = r.string()
    length = r.i32()
    return LogicalMessage(xid, flags, lsn, prefix, r.raw(length))


def _stream_start(r: _Reader, in_stream: bool) -> StreamStart:
    xid, first = r.unpack(_STREAM_START)
    return StreamStart(xid, bool(first))


def _stream_stop(r: _Reader, in_stream: bool) -> StreamStop:
    return StreamStop()


def _stream_commit(r: _Reader, in_stream: bool) -> StreamCommit:
    xid, flags, commit_lsn, end_lsn, commit_time = r.unpack(_STREAM_COMMIT)
    return StreamCommit(xid, flags, commit_lsn, end_lsn, commit_time)


def _stream_abort(r: _Reader, in_stream: bool) -> StreamAbort:
    xid, subxid = r.unpack(_STREAM_ABORT)
    return StreamAbort(xid, subxid)


_DECODERS: dict[int, Callable[[_Reader, bool], Message]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
    ord("S"): _stream_start,
    ord("E"): _stream_stop,
    ord("c"): _stream_commit,
    ord("A"): _stream_abort,
}


def decode(payload: bytes, *, in_stream: bool = False) -> Message:
    """Decode one pgoutput message. `in_stream`: between Stream Start and Stream Stop."""
    if not payload:
        raise PgOutputError("empty pgoutput message")
    kind = payload[0]
    if (kind == 0x49 or kind == 0x55) and not in_stream and len(payload) > 6 and payload[5] == 0x4E:
        # Inserts and key-preserving updates dominate bulk streams: no generic reader for them.
        try:
            values, end = _read_tuple(payload, 6)
        except (IndexError, struct_error) as exc:
            raise PgOutputError(f"truncated or corrupt {chr(kind)!r} message: {exc}") from exc
        if end != len(payload):
            raise PgOutputError(f"{len(payload) - end} unexpected trailing bytes in {chr(kind)!r} message")
        oid = _U32.unpack_from(payload, 1)[0]
        return Insert(None, oid, values) if kind == 0x49 else Update(None, oid, None, None, values)
    decoder = _DECODERS.get(payload[0])
    if decoder is None:
        raise PgOutputError(
            f"unknown pgoutput message kind {chr(payload[0])!r}; two-phase messages are not "
            "supported: create the slot without the 'two_phase' option"
        )
    reader = _Reader(payload)
    try:
        message = decoder(reader, in_stream)
    except PgOutputError:
        raise
    except (IndexError, ValueError, UnicodeDecodeError, struct_error) as exc:
        raise PgOutputError(f"truncated or corrupt {chr(payload[0])!r} message: {exc}") from exc
    if reader.pos != len(payload):
        raise PgOutputError(f"{len(payload) - reader.pos} unexpected trailing bytes in {chr(payload[0])!r} message")
    return message


class Decoder:
    """Stateful wrapper of `decode` that knows when it is inside a streamed block."""

    __slots__ = ("in_stream",)

    def __init__(self) -> None:
        self.in_stream = False

    def feed(self, payload: bytes) -> Message:
        message = decode(payload, in_stream=self.in_stream)
        if isinstance(message, StreamStart):
            self.in_stream = True
        elif isinstance(message, StreamStop):
            self.in_stream = False
        return message


# -- values -----------------------------------------------------------------------------------

TYPE_NAMES: dict[int, str] = {
    16: "bool",
    17: "bytea",
    18: "char",
    19: "name",
    20: "int8",
    21: "int2",
    23: "int4",
    25: "text",
    26: "oid",
    114: "json",
    700: "float4",
    701: "float8",
    1042: "bpchar",
    1043: "varchar",
    1082: "date",
    1083: "time",
    1114: "timestamp",
    1184: "timestamptz",
    1186: "interval",
    1266: "timetz",
    1700: "numeric",
    2950: "uuid",
    3802: "jsonb",
}


def _bool(text: str) -> bool:
    # 't'/'f' from the output function; 'true'/'false' from a bool::text cast (the snapshot).
    return text in ("t", "true")


def _bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    raise PgOutputError(f"bytea value {text[:40]!r} is not in hex format; set bytea_output = 'hex' on the source")


def _float(text: str) -> float:
    return float(text)  # accepts NaN, Infinity, -Infinity


def _date(text: str) -> dt.date:
    if text == "infinity":
        return dt.date.max
    if text == "-infinity":
        return dt.date.min
    return dt.date.fromisoformat(text)


def _timestamp(text: str) -> dt.datetime:
    if text == "infinity":
        return dt.datetime.max
    if text == "-infinity":
        return dt.datetime.min
    return dt.datetime.fromisoformat(text)


_UTC = dt.timezone.utc


def _timestamptz(text: str) -> dt.datetime:
    if text == "infinity":
        return dt.datetime.max.replace(tzinfo=dt.timezone.utc)
    if text == "-infinity":
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo is _UTC else value.astimezone(_UTC)


def _timetz(text: str) -> dt.time:
    # PostgreSQL writes offsets as +HH, +HH:MM or +HH:MM:SS; fromisoformat needs at least HH:MM.
    for i in range(len(text) - 1, 0, -1):
        if text[i] in "+-":
            offset = text[i + 1:]
            if ":" not in offset:
                text = text[:i + 1] + offset + ":00"
            break
    return dt.time.fromisoformat(text)


_CONVERTERS: dict[int, Callable[[str], Any]] = {
    16: _bool,
    17: _bytea,
    20: int,
    21: int,
    23: int,
    26: int,
    114: json.loads,
    700: _float,
    701: _float,
    1082: _date,
    1083: dt.time.fromisoformat,
    1114: _timestamp,
    1184: _timestamptz,
    1266: _timetz,
    1700: Decimal,
    2950: uuid.UUID,
    3802: json.loads,
}


def convert_value(type_oid: int, value: Datum) -> Any:
    """A pgoutput column value as a Python value, by the column's type OID.

    Text types and types without a converter stay `str`; NULL stays None; an unchanged TOASTed
    value stays `UNAVAILABLE`; binary-format values stay `bytes`.
    """
    if value is None or value is UNAVAILABLE or isinstance(value, bytes):
        return value
    converter = _CONVERTERS.get(type_oid)
    if converter is None:
        return value
    try:
        return converter(value)
    except (ValueError, ArithmeticError) as exc:
        name = TYPE_NAMES.get(type_oid, f"oid {type_oid}")
        raise PgOutputError(f"cannot read {value[:60]!r} as {name}: {exc}") from exc


def converter_for(type_oid: int) -> Callable[[str], Any] | None:
    """The text-to-Python function of a type OID (None: the text is kept as `str`)."""
    return _CONVERTERS.get(type_oid)
