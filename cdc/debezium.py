"""Reading what Debezium's PostgreSQL connector writes with Kafka Connect's JSON converter.

Both converter settings are accepted: `schemas.enable=true` (`{"schema": ..., "payload": ...}`)
and `false` (the bare envelope). With a schema every value is decoded by its Connect type and
semantic name:

- decimals: `precise` mode (`org.apache.kafka.connect.data.Decimal`, base64 big-endian two's
  complement bytes, `scale` in the schema parameters), `io.debezium.data.VariableScaleDecimal`
  (`{"scale", "value"}`), `string` mode (a string) and `double` mode (a number) → `Decimal`;
- times: `io.debezium.time.Timestamp` (ms), `MicroTimestamp` (µs), `NanoTimestamp` (ns) → naive
  `datetime`; `ZonedTimestamp` (ISO-8601 string) → aware `datetime`; `Date` (days) → `date`;
  `Time` (ms), `MicroTime` (µs), `NanoTime` (ns) → `time`;
- `io.debezium.data.Json` → parsed JSON, `io.debezium.data.Uuid` → `UUID`, `bytes` → `bytes`.

Without a schema values stay as JSON gives them (strings, numbers); the mapping turns them into
the target's types. A precise-mode decimal without a schema is a base64 string whose scale is
unknown: the sync spec's `scale:` on that column says how to read it; a VariableScaleDecimal
(a `{"scale", "value"}` object) carries its scale and is decoded without a schema too.
Times without a schema are bare numbers whose unit only the connector's settings tell: give
their columns a schema (`value.converter.schemas.enable=true`).

`__debezium_unavailable_value` (an unchanged TOASTed value) becomes `cdc.events.UNAVAILABLE`, in
whichever encoding it arrives (plain string, or base64 of the placeholder for binary columns).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from cdc.events import UNAVAILABLE, ChangeEvent, Source
from cdc.exceptions import CDCError

__all__ = [
    "DebeziumFormatError",
    "PLACEHOLDER",
    "decode_decimal_bytes",
    "decode_variable_scale",
    "parse_envelope",
    "parse_record",
    "record_columns",
]

PLACEHOLDER = "__debezium_unavailable_value"
_PLACEHOLDER_B64 = base64.b64encode(PLACEHOLDER.encode()).decode()
_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_DATE = dt.date(1970, 1, 1)
_OPS = frozenset({"r", "c", "u", "d", "t"})


class DebeziumFormatError(CDCError):
    """A record is not a Debezium change event this reader understands."""


# -- values --------------------------------------------------------------------------------------


def _is_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return value == PLACEHOLDER or value == _PLACEHOLDER_B64
    if isinstance(value, list) and value:
        return all(_is_placeholder(item) for item in value)
    return False


def decode_decimal_bytes(encoded: Any, scale: int) -> Decimal:
    """Connect's Decimal: base64 of the unscaled value, big-endian two's complement."""
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise DebeziumFormatError(f"decimal value {encoded!r} is not base64; expected Debezium's precise mode") from exc
    unscaled = int.from_bytes(raw, "big", signed=True)
    return Decimal(unscaled).scaleb(-scale)


def decode_variable_scale(value: Any) -> Decimal:
    """Debezium's VariableScaleDecimal: `{"scale": s, "value": base64 unscaled}`."""
    if not isinstance(value, Mapping) or "scale" not in value or "value" not in value:
        raise DebeziumFormatError(f"VariableScaleDecimal {value!r} is not a {{scale, value}} object")
    try:
        scale = int(value["scale"])
    except (TypeError, ValueError):
        raise DebeziumFormatError(f"VariableScaleDecimal {value!r} has a scale that is not an integer") from None
    return decode_decimal_bytes(value["value"], scale)


def _time_of_day(value: int, per_second: int) -> dt.time:
    micros = value * 1_000_000 // per_second
    seconds, micro = divmod(micros, 1_000_000)
    hours, rest = divmod(seconds, 3600)
    minutes, second = divmod(rest, 60)
    if hours >= 24:  # PostgreSQL allows 24:00:00
        return dt.time(23, 59, 59, 999_999)
    return dt.time(hours, minutes, second, micro)


def _parse_iso(value: str) -> dt.datetime:
    text = value.replace("Z", "+00:00") if value.endswith("Z") else value
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise DebeziumFormatError(f"timestamp {value!r} is not ISO-8601 as Debezium's ZonedTimestamp writes it") from exc


def _convert(value: Any, field: Mapping[str, Any]) -> Any:
    """Decode one value by its Connect field schema."""
    if value is None:
        return None
    if _is_placeholder(value):
        return UNAVAILABLE
    name = field.get("name")
    ftype = field.get("type")
    if name == "org.apache.kafka.connect.data.Decimal":
        params = field.get("parameters") or {}
        if isinstance(value, str):
            try:
                return decode_decimal_bytes(value, int(params.get("scale", 0)))
            except DebeziumFormatError:
                return Decimal(value)
        return Decimal(str(value))
    if name == "io.debezium.data.VariableScaleDecimal":
        return decode_variable_scale(value)
    if name == "io.debezium.time.Timestamp":
        return _EPOCH + dt.timedelta(milliseconds=int(value))
    if name == "io.debezium.time.MicroTimestamp":
        return _EPOCH + dt.timedelta(microseconds=int(value))
    if name == "io.debezium.time.NanoTimestamp":
        return _EPOCH + dt.timedelta(microseconds=int(value) // 1000)
    if name == "io.debezium.time.ZonedTimestamp":
        return _parse_iso(str(value))
    if name in ("io.debezium.time.Date", "org.apache.kafka.connect.data.Date"):
        return _EPOCH_DATE + dt.timedelta(days=int(value))
    if name in ("io.debezium.time.Time", "org.apache.kafka.connect.data.Time"):
        return _time_of_day(int(value), 1000)
    if name == "io.debezium.time.MicroTime":
        return _time_of_day(int(value), 1_000_000)
    if name == "io.debezium.time.NanoTime":
        return _time_of_day(int(value), 1_000_000_000)
    if name == "io.debezium.time.ZonedTime":
        return dt.time.fromisoformat(str(value).replace("Z", "+00:00"))
    if name == "org.apache.kafka.connect.data.Timestamp":
        return _EPOCH + dt.timedelta(milliseconds=int(value))
    if name == "io.debezium.data.Json":
        return json.loads(value) if isinstance(value, str) else value
    if name == "io.debezium.data.Uuid":
        return uuid.UUID(str(value))
    if ftype == "bytes":
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DebeziumFormatError(f"bytes value {value!r} is not base64") from exc
    if ftype == "struct" and isinstance(value, Mapping):
        return _convert_row(value, field)
    if ftype == "array" and isinstance(value, list):
        item = field.get("items") or {}
        return [_convert(v, item) for v in value]
    return value


def _fields(struct: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    if not struct:
        return {}
    return {f["field"]: f for f in struct.get("fields", [])}


def _convert_row(row: Mapping[str, Any] | None, struct: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    fields = _fields(struct)
    out: dict[str, Any] = {}
    for column, value in row.items():
        field = fields.get(column)
        if field is None:
            out[column] = UNAVAILABLE if _is_placeholder(value) else value
        else:
            out[column] = _convert(value, field)
    return out


def _plain_value(value: Any) -> Any:
    """A value without its Connect schema: only the placeholder and a VariableScaleDecimal (the
    one struct Debezium writes for a column's value: `{"scale": int, "value": base64}`; JSON
    columns arrive as strings, so no row value looks like it by chance) are recognised."""
    if _is_placeholder(value):
        return UNAVAILABLE
    if (isinstance(value, Mapping) and set(value) == {"scale", "value"}
            and isinstance(value["scale"], int) and isinstance(value["value"], str)):
        try:
            return decode_variable_scale(value)
        except DebeziumFormatError:
            return value  # not base64: left for the mapping to report
    return value


def _plain_row(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {column: _plain_value(value) for column, value in row.items()}


# -- envelopes -----------------------------------------------------------------------------------


def _snapshot_flag(value: Any) -> str:
    """Debezium wrote `snapshot` as a boolean before 1.x; now "true", "false", "last", ..."""
    if value is None or value is False:
        return "false"
    if value is True:
        return "true"
    text = str(value).lower()
    # "first", "first_in_data_collection", "last_in_data_collection" are snapshot rows too.
    if text in ("false", "true", "last", "incremental"):
        return text
    return "true"


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def _positions(source: Mapping[str, Any]) -> tuple[int | None, int | None]:
    lsn = _int_or_none(source.get("lsn"))
    commit_lsn = _int_or_none(source.get("commit_lsn"))
    sequence = source.get("sequence")
    if sequence:
        try:
            parts = json.loads(sequence) if isinstance(sequence, str) else sequence
            if isinstance(parts, list) and len(parts) == 2:
                if parts[0] is not None:
                    commit_lsn = int(parts[0])
                if parts[1] is not None:
                    lsn = int(parts[1])
        except (ValueError, TypeError) as exc:
            raise DebeziumFormatError(f"source.sequence {sequence!r} is not [\"<commit_lsn>\",\"<lsn>\"]") from exc
    if commit_lsn is None:
        commit_lsn = lsn
    return commit_lsn, lsn


def _split(obj: Any) -> tuple[Mapping[str, Any] | None, Any]:
    """(schema, payload) for both converter settings."""
    if isinstance(obj, Mapping) and "payload" in obj and "schema" in obj and set(obj) <= {"schema", "payload"}:
        return obj["schema"], obj["payload"]
    return None, obj


def parse_envelope(
    obj: Any, *, key: Mapping[str, Any] | None = None, topic: str | None = None
) -> ChangeEvent:
    """One Debezium envelope (with or without the Connect schema part) as a `ChangeEvent`."""
    schema, payload = _split(obj)
    if not isinstance(payload, Mapping):
        raise DebeziumFormatError(f"a Debezium change event is a JSON object with 'op'; got {str(obj)[:200]!r}")
    op = payload.get("op")
    if op not in _OPS:
        raise DebeziumFormatError(
            f"unknown op {op!r} in Debezium event; expected one of r, c, u, d, t (is this a change event topic?)"
        )
    src = payload.get("source")
    if not isinstance(src, Mapping):
        raise DebeziumFormatError("Debezium event has no 'source' block; cannot tell its table")
    schema_name = src.get("schema")
    table = src.get("table")
    if (not schema_name or not table) and topic:
        parts = topic.split(".")
        if len(parts) >= 3:
            schema_name, table = schema_name or parts[-2], table or parts[-1]
    if not schema_name or not table:
        raise DebeziumFormatError("Debezium event names no schema/table in 'source' and no topic was given")
    commit_lsn, lsn = _positions(src)
    tx_id = _int_or_none(src.get("txId"))
    ts_ms = int(src.get("ts_ms") or payload.get("ts_ms") or 0)
    source = Source(
        name=str(src.get("name") or (topic.split(".")[0] if topic else "")),
        db=str(src.get("db") or ""),
        schema=str(schema_name),
        table=str(table),
        lsn=lsn,
        commit_lsn=commit_lsn,
        tx_id=tx_id,
        ts_ms=ts_ms,
        snapshot=_snapshot_flag(src.get("snapshot")),
    )
    if schema is not None:
        fields = _fields(schema)
        before = _convert_row(payload.get("before"), fields.get("before"))
        after = _convert_row(payload.get("after"), fields.get("after"))
    else:
        before = _plain_row(payload.get("before"))
        after = _plain_row(payload.get("after"))
    return ChangeEvent(
        op=op,
        source=source,
        key=dict(key) if key is not None and op != "t" else None,
        before=before,
        after=after,
        ts_ms=int(payload.get("ts_ms") or ts_ms),
    )


def record_columns(obj: Any) -> dict[str, Mapping[str, Any]] | None:
    """The row's Connect field schemas by column, when the record carries a schema."""
    schema, _ = _split(obj)
    if schema is None:
        return None
    fields = _fields(schema)
    return _fields(fields.get("after") or fields.get("before"))


def _parse_key(key: bytes | None) -> dict[str, Any] | None:
    if not key:
        return None
    try:
        obj = json.loads(key)
    except ValueError as exc:
        raise DebeziumFormatError(f"record key {key[:200]!r} is not JSON") from exc
    schema, payload = _split(obj)
    if not isinstance(payload, Mapping):
        return None
    return _convert_row(payload, schema) if schema is not None else _plain_row(payload)


def parse_record(key: bytes | None, value: bytes | None, topic: str) -> ChangeEvent | None:
    """A Kafka record written by Debezium (or our Kafka transport); None for a tombstone."""
    if value is None or value == b"" or value.strip() == b"null":
        return None
    try:
        obj = json.loads(value)
    except ValueError as exc:
        raise DebeziumFormatError(f"record value on topic {topic!r} is not JSON: {value[:200]!r}") from exc
    if obj is None:
        return None
    _, payload = _split(obj)
    if payload is None:
        return None
    return parse_envelope(obj, key=_parse_key(key), topic=topic)
