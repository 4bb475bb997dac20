"""Test-only encoder of pgoutput messages: the inverse of `cdc.pgoutput.decode`.

Also renders Python values in PostgreSQL's text output format, so value conversion can be
tested as a round trip (Python value -> text -> `convert_value`).
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import uuid
from decimal import Decimal
from typing import Any

from cdc.events import UNAVAILABLE
from cdc.pgoutput import (
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    Update,
)


def _string(text: str) -> bytes:
    return text.encode() + b"\x00"


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack("!I", xid)


def encode_tuple(values: TupleData) -> bytes:
    out = [struct.pack("!h", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNAVAILABLE:
            out.append(b"u")
        elif isinstance(value, str):
            data = value.encode()
            out.append(b"t" + struct.pack("!i", len(data)) + data)
        elif isinstance(value, bytes):
            out.append(b"b" + struct.pack("!i", len(value)) + value)
        else:
            raise TypeError(f"cannot encode tuple value {value!r}")
    return b"".join(out)


def encode(message: Message) -> bytes:
    """The bytes pgoutput sends for `message` (xid fields only when inside a stream block)."""
    if isinstance(message, Begin):
        return b"B" + struct.pack("!QqI", message.final_lsn, message.commit_time, message.xid)
    if isinstance(message, Commit):
        return b"C" + struct.pack("!BQQq", message.flags, message.commit_lsn, message.end_lsn, message.commit_time)
    if isinstance(message, Origin):
        return b"O" + struct.pack("!Q", message.commit_lsn) + _string(message.name)
    if isinstance(message, Relation):
        out = [
            b"R", _xid(message.xid), struct.pack("!I", message.oid), _string(message.namespace),
            _string(message.name), message.replica_identity.encode(), struct.pack("!h", len(message.columns)),
        ]
        for column in message.columns:
            out.append(struct.pack("!B", column.flags) + _string(column.name) + struct.pack("!Ii", column.type_oid, column.type_modifier))
        return b"".join(out)
    if isinstance(message, Type):
        return b"Y" + _xid(message.xid) + struct.pack("!I", message.oid) + _string(message.namespace) + _string(message.name)
    if isinstance(message, Insert):
        return b"I" + _xid(message.xid) + struct.pack("!I", message.relation_oid) + b"N" + encode_tuple(message.new)
    if isinstance(message, Update):
        old = b""
        if message.old_kind is not None:
            assert message.old is not None
            old = message.old_kind.encode() + encode_tuple(message.old)
        return b"U" + _xid(message.xid) + struct.pack("!I", message.relation_oid) + old + b"N" + encode_tuple(message.new)
    if isinstance(message, Delete):
        return b"D" + _xid(message.xid) + struct.pack("!I", message.relation_oid) + message.old_kind.encode() + encode_tuple(message.old)
    if isinstance(message, Truncate):
        return (
            b"T" + _xid(message.xid) + struct.pack("!iB", len(message.relation_oids), message.options)
            + b"".join(struct.pack("!I", oid) for oid in message.relation_oids)
        )
    if isinstance(message, LogicalMessage):
        return (
            b"M" + _xid(message.xid) + struct.pack("!BQ", message.flags, message.lsn) + _string(message.prefix)
            + struct.pack("!i", len(message.content)) + message.content
        )
    if isinstance(message, StreamStart):
        return b"S" + struct.pack("!IB", message.xid, int(message.first_segment))
    if isinstance(message, StreamStop):
        return b"E"
    if isinstance(message, StreamCommit):
        return b"c" + struct.pack("!IBQQq", message.xid, message.flags, message.commit_lsn, message.end_lsn, message.commit_time)
    if isinstance(message, StreamAbort):
        return b"A" + struct.pack("!II", message.xid, message.subxid)
    raise TypeError(f"cannot encode {message!r}")


def _offset(delta: dt.timedelta | None) -> str:
    assert delta is not None
    seconds = int(delta.total_seconds())
    sign = "+" if seconds >= 0 else "-"
    seconds = abs(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{hours:02d}"
    if minutes or secs:
        text += f":{minutes:02d}"
    if secs:
        text += f":{secs:02d}"
    return text


def _fraction(microsecond: int) -> str:
    return f".{microsecond:06d}".rstrip("0") if microsecond else ""


def _datetime(value: dt.datetime) -> str:
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}" + _fraction(value.microsecond)
    )


def pg_text(type_name: str, value: Any) -> str:
    """`value` the way PostgreSQL's output function (DateStyle ISO) writes it for `type_name`."""
    if type_name == "bool":
        return "t" if value else "f"
    if type_name == "bytea":
        return "\\x" + bytes(value).hex()
    if type_name in ("int2", "int4", "int8"):
        return str(int(value))
    if type_name == "numeric":
        assert isinstance(value, Decimal)
        return str(value) if not value.is_finite() else format(value, "f")
    if type_name in ("float4", "float8"):
        if value != value:
            return "NaN"
        if value in (float("inf"), float("-inf")):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(float(value))
    if type_name in ("text", "varchar"):
        return str(value)
    if type_name in ("json", "jsonb"):
        return json.dumps(value)
    if type_name == "uuid":
        assert isinstance(value, uuid.UUID)
        return str(value)
    if type_name == "date":
        return value.isoformat()
    if type_name == "time":
        return f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}" + _fraction(value.microsecond)
    if type_name == "timestamp":
        return _datetime(value)
    if type_name == "timestamptz":
        return _datetime(value) + _offset(value.utcoffset())
    raise TypeError(f"no text rendering for {type_name}")
