"""Reading Debezium PostgreSQL connector records (JSON converter), fixtures per its documented formats."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from cdc.debezium import DebeziumFormatError, parse_envelope, parse_record
from cdc.events import UNAVAILABLE

SOURCE = {
    "version": "2.5.0.Final", "connector": "postgresql", "name": "legacy", "ts_ms": 1714564800000,
    "snapshot": "false", "db": "legacy", "sequence": "[\"24023928\",\"24023984\"]", "schema": "public",
    "table": "catalog_product", "txId": 747, "lsn": 24023984, "xmin": None,
}

DECIMAL_PRECISE = {"type": "bytes", "optional": False, "name": "org.apache.kafka.connect.data.Decimal",
                   "version": 1, "parameters": {"scale": "2", "connect.decimal.precision": "10"}, "field": "price"}
VARIABLE = {"type": "struct", "fields": [{"type": "int32", "optional": False, "field": "scale"},
                                         {"type": "bytes", "optional": False, "field": "value"}],
            "optional": True, "name": "io.debezium.data.VariableScaleDecimal", "version": 1, "field": "weight"}


def _row_schema(fields: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "struct", "optional": True, "name": "legacy.public.catalog_product.Value", "fields": fields}


def _with_schema(payload: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, Any]:
    row = _row_schema(fields)
    return {
        "schema": {"type": "struct", "name": "legacy.public.catalog_product.Envelope", "optional": False, "fields": [
            {**row, "field": "before"}, {**row, "field": "after"},
            {"type": "struct", "fields": [], "optional": False, "name": "io.debezium.connector.postgresql.Source", "field": "source"},
            {"type": "string", "optional": False, "field": "op"}, {"type": "int64", "optional": True, "field": "ts_ms"}]},
        "payload": payload,
    }


def _payload(op: str, after: dict[str, Any] | None, before: dict[str, Any] | None = None, **source: Any) -> dict[str, Any]:
    return {"before": before, "after": after, "source": {**SOURCE, **source}, "op": op, "ts_ms": 1714564800123, "transaction": None}


ID = {"type": "int32", "optional": False, "field": "id"}


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [("B88=", Decimal("19.99")), ("/2o=", Decimal("-1.50")), ("AA==", Decimal("0.00"))],
)
def test_precise_decimal_with_schema_uses_the_schema_scale(encoded: str, expected: Decimal) -> None:
    record = _with_schema(_payload("c", {"id": 1, "price": encoded}), [ID, DECIMAL_PRECISE])
    event = parse_envelope(record)
    assert event.after == {"id": 1, "price": expected}
    assert event.after["price"].as_tuple().exponent == -2


def test_string_and_double_decimal_modes() -> None:
    string_field = {"type": "string", "optional": False, "field": "price"}
    double_field = {"type": "double", "optional": False, "field": "price"}
    assert parse_envelope(_with_schema(_payload("c", {"id": 1, "price": "19.99"}), [ID, string_field])).after["price"] == "19.99"
    assert parse_envelope(_with_schema(_payload("c", {"id": 1, "price": 19.99}), [ID, double_field])).after["price"] == 19.99
    # Without a schema the values stay as JSON gives them; the mapping converts them.
    assert parse_envelope(_payload("c", {"id": 1, "price": "19.99"})).after["price"] == "19.99"


def test_variable_scale_decimal() -> None:
    record = _with_schema(_payload("c", {"id": 1, "weight": {"scale": 3, "value": "MDk="}}), [ID, VARIABLE])
    assert parse_envelope(record).after["weight"] == Decimal("12.345")


def test_temporal_types() -> None:
    fields = [
        ID,
        {"type": "int64", "name": "io.debezium.time.Timestamp", "field": "ms"},
        {"type": "int64", "name": "io.debezium.time.MicroTimestamp", "field": "micro"},
        {"type": "int64", "name": "io.debezium.time.NanoTimestamp", "field": "nano"},
        {"type": "string", "name": "io.debezium.time.ZonedTimestamp", "field": "zoned"},
        {"type": "int32", "name": "io.debezium.time.Date", "field": "day"},
        {"type": "int32", "name": "io.debezium.time.Time", "field": "t_ms"},
        {"type": "int64", "name": "io.debezium.time.MicroTime", "field": "t_micro"},
        {"type": "string", "name": "io.debezium.data.Json", "field": "attributes"},
        {"type": "string", "name": "io.debezium.data.Uuid", "field": "uid"},
        {"type": "bytes", "field": "blob"},
    ]
    after = {
        "id": 1, "ms": 1714564800123, "micro": 1714564800123456, "nano": 1714564800123456789,
        "zoned": "2024-05-01T12:00:00.5Z", "day": 19844, "t_ms": 45296789, "t_micro": 45296789012,
        "attributes": "{\"color\":\"red\"}", "uid": "12345678-1234-5678-1234-567812345678", "blob": "AQID",
    }
    row = parse_envelope(_with_schema(_payload("c", after), fields)).after
    assert row is not None
    assert row["ms"] == dt.datetime(2024, 5, 1, 12, 0, 0, 123000)
    assert row["micro"] == dt.datetime(2024, 5, 1, 12, 0, 0, 123456)
    assert row["nano"] == dt.datetime(2024, 5, 1, 12, 0, 0, 123456)
    assert row["zoned"] == dt.datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=dt.timezone.utc)
    assert row["day"] == dt.date(2024, 5, 1)
    assert row["t_ms"] == dt.time(12, 34, 56, 789000)
    assert row["t_micro"] == dt.time(12, 34, 56, 789012)
    assert row["attributes"] == {"color": "red"}
    assert row["uid"] == uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert row["blob"] == b"\x01\x02\x03"


@pytest.mark.parametrize("with_schema", [True, False])
def test_unavailable_placeholder_becomes_the_sentinel(with_schema: bool) -> None:
    fields = [ID, {"type": "string", "field": "description"}, {"type": "bytes", "field": "blob"}]
    after = {"id": 7, "description": "__debezium_unavailable_value", "blob": "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="}
    record = _with_schema(_payload("u", after), fields) if with_schema else _payload("u", after)
    row = parse_envelope(record).after
    assert row is not None and row["description"] is UNAVAILABLE and row["blob"] is UNAVAILABLE


@pytest.mark.parametrize(
    ("flag", "expected"),
    [(True, "true"), (False, "false"), ("true", "true"), ("last", "last"), ("incremental", "incremental"),
     ("first_in_data_collection", "true"), (None, "false")],
)
def test_snapshot_flag_boolean_or_string(flag: Any, expected: str) -> None:
    assert parse_envelope(_payload("r", {"id": 1}, snapshot=flag)).source.snapshot == expected


def test_positions_from_sequence_and_lsn() -> None:
    event = parse_envelope(_payload("u", {"id": 1}, {"id": 1}))
    assert event.position == (24023928, 24023984)
    assert event.source.tx_id == 747
    without_sequence = parse_envelope(_payload("c", {"id": 1}, sequence=None, lsn=500))
    assert without_sequence.position == (500, 500)


def test_record_key_tombstone_delete_and_truncate() -> None:
    topic = "legacy.public.catalog_product"
    key = json.dumps({"schema": {"type": "struct", "fields": [ID], "optional": False}, "payload": {"id": 3}}).encode()
    delete = parse_record(key, json.dumps(_payload("d", None, {"id": 3})).encode(), topic)
    assert delete is not None and delete.op == "d" and delete.key == {"id": 3} and delete.before == {"id": 3}
    assert parse_record(key, None, topic) is None
    assert parse_record(key, b"", topic) is None
    truncate = parse_record(None, json.dumps(_payload("t", None)).encode(), topic)
    assert truncate is not None and truncate.op == "t" and truncate.key is None


def test_table_from_topic_when_source_lacks_it() -> None:
    payload = _payload("c", {"id": 1})
    del payload["source"]["schema"], payload["source"]["table"]
    event = parse_envelope(payload, topic="legacy.public.catalog_category")
    assert (event.source.schema, event.source.table) == ("public", "catalog_category")


@pytest.mark.parametrize(
    "value", [b"not json", json.dumps({"op": "x", "source": SOURCE}).encode(), json.dumps({"op": "c"}).encode()]
)
def test_bad_records_say_what_is_wrong(value: bytes) -> None:
    with pytest.raises(DebeziumFormatError):
        parse_record(None, value, "legacy.public.catalog_product")


def test_our_own_envelopes_round_trip() -> None:
    from cdc.events import ChangeEvent, Source

    src = Source(name="legacy", db="legacy", schema="public", table="catalog_product", lsn=42, commit_lsn=40,
                 tx_id=9, ts_ms=1, snapshot="false")
    original = ChangeEvent(op="u", source=src, key={"id": 1}, before={"id": 1},
                           after={"id": 1, "price": Decimal("1.50"), "attributes": {"a": [1]},
                                  "updated_at": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
                                  "description": UNAVAILABLE}, ts_ms=2)
    for with_schema in (True, False):
        value = json.dumps(original.to_debezium(with_schema=with_schema)).encode()
        key = json.dumps(original.key_json(with_schema=with_schema)).encode()
        parsed = parse_record(key, value, "legacy.public.catalog_product")
        assert parsed is not None and parsed.position == (40, 42) and parsed.key == {"id": 1}
        assert parsed.after is not None and parsed.after["description"] is UNAVAILABLE
        if with_schema:
            assert parsed.after["attributes"] == {"a": [1]}
            assert parsed.after["updated_at"] == dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
