"""Change events: the one model every captured or consumed row change is carried in.

A `ChangeEvent` is what our own capture builds from pgoutput and what the apply side parses
out of Debezium's JSON, so both paths are interchangeable. `to_debezium` renders the envelope
Debezium's PostgreSQL connector writes with the JSON converter (numerics in "string" mode).
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

__all__ = [
    "UNAVAILABLE",
    "UNAVAILABLE_TEXT",
    "Column",
    "ChangeEvent",
    "Position",
    "Source",
    "Unavailable",
    "connect_field_schema",
    "debezium_value",
]

Position = tuple[int, int]

UNAVAILABLE_TEXT = "__debezium_unavailable_value"


class Unavailable(enum.Enum):
    """Marker type of an unchanged TOASTed value that the stream did not carry."""

    UNAVAILABLE = UNAVAILABLE_TEXT

    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE = Unavailable.UNAVAILABLE

_EPOCH_DATE = dt.date(1970, 1, 1)
_EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class Column:
    """A column of a source table: name, PostgreSQL type name (`int4`, `numeric`, ...), nullability."""

    name: str
    type_name: str
    optional: bool = True
    key: bool = False


@dataclass(frozen=True, slots=True)
class Source:
    """Where and when a change happened, as in Debezium's `source` block."""

    name: str
    db: str
    schema: str
    table: str
    lsn: int | None
    commit_lsn: int | None
    tx_id: int | None
    ts_ms: int
    snapshot: str
    connector: str = "postgresql"

    @property
    def sequence(self) -> str:
        return json.dumps([str(self.commit_lsn or 0), str(self.lsn or 0)], separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": "strangler-0.1",
            "connector": self.connector,
            "name": self.name,
            "ts_ms": self.ts_ms,
            "snapshot": self.snapshot,
            "db": self.db,
            "sequence": self.sequence,
            "schema": self.schema,
            "table": self.table,
            "txId": self.tx_id,
            "lsn": self.lsn,
            "xmin": None,
        }


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One row change (op c/u/d), snapshot row (r) or table truncate (t).

    `key`, `before` and `after` map column names to Python values (int, Decimal, str, bool, aware datetime for
    timestamptz, naive datetime for timestamp, date, time, dict/list for json, bytes, UUID, None)
    or `UNAVAILABLE` for an unchanged TOASTed column. `columns`, when the producer knows them,
    carries the table's column types so the Debezium encoding (and its Connect schema) is exact.
    """

    op: str
    source: Source
    key: dict[str, Any] | None
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    ts_ms: int
    columns: tuple[Column, ...] | None = field(default=None, compare=False)

    @property
    def position(self) -> Position:
        """(commit_lsn, lsn): snapshot rows have lsn 0 and the slot's consistent point."""
        return (self.source.commit_lsn or 0, self.source.lsn or 0)

    @property
    def topic_suffix(self) -> str:
        return f"{self.source.schema}.{self.source.table}"

    def _columns(self, columns: Sequence[Column] | None) -> tuple[Column, ...]:
        if columns is not None:
            return tuple(columns)
        if self.columns is not None:
            return self.columns
        return _infer_columns(self.key or {}, self.before, self.after)

    def to_debezium(self, *, with_schema: bool = False, columns: Sequence[Column] | None = None) -> dict[str, Any]:
        """The value of the Kafka record Debezium would write (Connect JSON converter)."""
        cols = self._columns(columns)
        types = {c.name: c.type_name for c in cols}
        payload = {
            "before": _encode_row(self.before, types),
            "after": _encode_row(self.after, types),
            "source": self.source.to_dict(),
            "op": self.op,
            "ts_ms": self.ts_ms,
            "transaction": None,
        }
        if not with_schema:
            return payload
        prefix = f"{self.source.name}.{self.source.schema}.{self.source.table}"
        row_schema = {
            "type": "struct",
            "fields": [connect_field_schema(c) for c in cols],
            "optional": True,
            "name": f"{prefix}.Value",
        }
        schema = {
            "type": "struct",
            "fields": [
                {**row_schema, "field": "before"},
                {**row_schema, "field": "after"},
                _SOURCE_SCHEMA,
                {"type": "string", "optional": False, "field": "op"},
                {"type": "int64", "optional": True, "field": "ts_ms"},
                _TRANSACTION_SCHEMA,
            ],
            "optional": False,
            "name": f"{prefix}.Envelope",
            "version": 1,
        }
        return {"schema": schema, "payload": payload}

    def key_json(self, *, with_schema: bool = False, columns: Sequence[Column] | None = None) -> dict[str, Any] | None:
        """The Kafka record key: the primary-key columns (None for a truncate)."""
        if self.key is None:
            return None
        cols = self._columns(columns)
        types = {c.name: c.type_name for c in cols}
        payload = _encode_row(self.key, types)
        if not with_schema:
            return payload
        by_name = {c.name: c for c in cols}
        fields = [
            connect_field_schema(Column(name, by_name[name].type_name if name in by_name else _infer_type(value), optional=False, key=True))
            for name, value in self.key.items()
        ]
        prefix = f"{self.source.name}.{self.source.schema}.{self.source.table}"
        return {
            "schema": {"type": "struct", "fields": fields, "optional": False, "name": f"{prefix}.Key"},
            "payload": payload,
        }


def _encode_row(row: Mapping[str, Any] | None, types: Mapping[str, str]) -> dict[str, Any] | None:
    if row is None:
        return None
    return {name: debezium_value(value, types.get(name)) for name, value in row.items()}


def debezium_value(value: Any, type_name: str | None = None) -> Any:
    """A Python column value in Debezium's JSON encoding for its PostgreSQL type."""
    if value is None:
        return None
    if value is UNAVAILABLE:
        if type_name == "bytea":
            return base64.b64encode(UNAVAILABLE_TEXT.encode()).decode()
        return UNAVAILABLE_TEXT
    if type_name in ("json", "jsonb"):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            delta = value - _EPOCH
            return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return _zoned_timestamp(value)
    if isinstance(value, dt.date):
        return (value - _EPOCH_DATE).days
    if isinstance(value, dt.time):
        if value.tzinfo is not None:
            return value.isoformat()
        return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


def _zoned_timestamp(value: dt.datetime) -> str:
    utc = value.astimezone(dt.timezone.utc)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


# PostgreSQL type name -> (Connect type, semantic name or None)
_CONNECT_TYPES: dict[str, tuple[str, str | None]] = {
    "int2": ("int16", None),
    "int4": ("int32", None),
    "int8": ("int64", None),
    "oid": ("int64", None),
    "numeric": ("string", None),
    "float4": ("float", None),
    "float8": ("double", None),
    "bool": ("boolean", None),
    "text": ("string", None),
    "varchar": ("string", None),
    "bpchar": ("string", None),
    "name": ("string", None),
    "timestamptz": ("string", "io.debezium.time.ZonedTimestamp"),
    "timestamp": ("int64", "io.debezium.time.MicroTimestamp"),
    "date": ("int32", "io.debezium.time.Date"),
    "time": ("int64", "io.debezium.time.MicroTime"),
    "timetz": ("string", "io.debezium.time.ZonedTime"),
    "json": ("string", "io.debezium.data.Json"),
    "jsonb": ("string", "io.debezium.data.Json"),
    "uuid": ("string", "io.debezium.data.Uuid"),
    "bytea": ("bytes", None),
}


def connect_field_schema(column: Column) -> dict[str, Any]:
    """The Connect schema of one field, as Debezium describes a column of that type."""
    connect_type, semantic = _CONNECT_TYPES.get(column.type_name, ("string", None))
    schema: dict[str, Any] = {"type": connect_type, "optional": column.optional}
    if semantic is not None:
        schema["name"] = semantic
        schema["version"] = 1
    schema["field"] = column.name
    return schema


def _infer_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int8"
    if isinstance(value, float):
        return "float8"
    if isinstance(value, Decimal):
        return "numeric"
    if isinstance(value, dt.datetime):
        return "timestamp" if value.tzinfo is None else "timestamptz"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, dt.time):
        return "time" if value.tzinfo is None else "timetz"
    if isinstance(value, (dict, list)):
        return "jsonb"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytea"
    if isinstance(value, uuid.UUID):
        return "uuid"
    return "text"


def _infer_columns(*rows: Mapping[str, Any] | None) -> tuple[Column, ...]:
    """Column types guessed from values, for events built without the table's description."""
    found: dict[str, str | None] = {}
    for row in rows:
        for name, value in (row or {}).items():
            if found.get(name) is None:
                found[name] = None if value is None or value is UNAVAILABLE else _infer_type(value)
    return tuple(Column(name, type_name or "text") for name, type_name in found.items())


_SOURCE_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "version"},
        {"type": "string", "optional": False, "field": "connector"},
        {"type": "string", "optional": False, "field": "name"},
        {"type": "int64", "optional": False, "field": "ts_ms"},
        {
            "type": "string",
            "optional": True,
            "name": "io.debezium.data.Enum",
            "version": 1,
            "parameters": {"allowed": "true,last,false,incremental"},
            "default": "false",
            "field": "snapshot",
        },
        {"type": "string", "optional": False, "field": "db"},
        {"type": "string", "optional": True, "field": "sequence"},
        {"type": "string", "optional": False, "field": "schema"},
        {"type": "string", "optional": False, "field": "table"},
        {"type": "int64", "optional": True, "field": "txId"},
        {"type": "int64", "optional": True, "field": "lsn"},
        {"type": "int64", "optional": True, "field": "xmin"},
    ],
    "optional": False,
    "name": "io.debezium.connector.postgresql.Source",
    "field": "source",
}

_TRANSACTION_SCHEMA: dict[str, Any] = {
    "type": "struct",
    "fields": [
        {"type": "string", "optional": False, "field": "id"},
        {"type": "int64", "optional": False, "field": "total_order"},
        {"type": "int64", "optional": False, "field": "data_collection_order"},
    ],
    "optional": True,
    "name": "event.block",
    "version": 1,
    "field": "transaction",
}
