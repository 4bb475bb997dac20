from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from decimal import Decimal

from cdc.events import UNAVAILABLE, UNAVAILABLE_TEXT, ChangeEvent, Column, Source, debezium_value

COLUMNS = (
    Column("id", "int4", optional=False, key=True),
    Column("sku", "varchar", optional=False),
    Column("price", "numeric", optional=False),
    Column("is_active", "bool", optional=False),
    Column("attributes", "jsonb", optional=False),
    Column("created_at", "timestamptz", optional=False),
    Column("born", "date"),
    Column("seen", "timestamp"),
    Column("blob", "bytea"),
    Column("token", "uuid"),
    Column("ratio", "float8"),
    Column("description", "text"),
)


def make_event(op: str = "u", **overrides: object) -> ChangeEvent:
    after = {
        "id": 7,
        "sku": "SKU-7",
        "price": Decimal("19.90"),
        "is_active": True,
        "attributes": {"colour": "red", "sizes": [1, 2]},
        "created_at": dt.datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=dt.timezone.utc),
        "born": dt.date(1970, 1, 11),
        "seen": dt.datetime(1970, 1, 1, 0, 0, 1, 5),
        "blob": b"\x00\xffab",
        "token": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "ratio": 0.5,
        "description": UNAVAILABLE,
    }
    source = Source(
        name="legacy", db="shop", schema="public", table="catalog_product",
        lsn=200, commit_lsn=300, tx_id=42, ts_ms=1_700_000_000_000, snapshot="false",
    )
    fields: dict[str, object] = {
        "op": op, "source": source, "key": {"id": 7}, "before": {"id": 7}, "after": after,
        "ts_ms": 1_700_000_000_500, "columns": COLUMNS,
    }
    fields.update(overrides)
    return ChangeEvent(**fields)  # type: ignore[arg-type]


def test_position_orders_by_commit_then_change_lsn() -> None:
    event = make_event()
    assert event.position == (300, 200)
    snapshot_row = make_event(op="r", source=Source("legacy", "shop", "public", "t", None, 250, None, 0, "true"))
    assert snapshot_row.position == (250, 0)
    assert snapshot_row.position < event.position


def test_to_debezium_without_schema_uses_debezium_encodings() -> None:
    envelope = make_event().to_debezium()
    after = envelope["after"]
    assert after["price"] == "19.90"
    assert after["created_at"] == "2024-05-01T12:30:15.25Z"
    assert after["born"] == 10
    assert after["seen"] == 1_000_005
    assert base64.b64decode(after["blob"]) == b"\x00\xffab"
    assert after["token"] == "12345678-1234-5678-1234-567812345678"
    assert json.loads(after["attributes"]) == {"colour": "red", "sizes": [1, 2]}
    assert after["description"] == UNAVAILABLE_TEXT
    assert envelope["before"] == {"id": 7}
    assert envelope["op"] == "u"
    assert envelope["ts_ms"] == 1_700_000_000_500
    source = envelope["source"]
    assert source["connector"] == "postgresql"
    assert (source["name"], source["db"], source["schema"], source["table"]) == ("legacy", "shop", "public", "catalog_product")
    assert source["lsn"] == 200 and source["txId"] == 42 and source["snapshot"] == "false"
    assert json.loads(source["sequence"]) == ["300", "200"]
    json.dumps(envelope)  # serialisable as is


def test_to_debezium_with_schema_describes_every_field() -> None:
    message = make_event().to_debezium(with_schema=True)
    schema, payload = message["schema"], message["payload"]
    assert schema["name"] == "legacy.public.catalog_product.Envelope"
    fields = {f["field"]: f for f in schema["fields"]}
    assert set(fields) == {"before", "after", "source", "op", "ts_ms", "transaction"}
    after_fields = {f["field"]: f for f in fields["after"]["fields"]}
    assert after_fields["id"]["type"] == "int32" and after_fields["id"]["optional"] is False
    assert after_fields["price"]["type"] == "string"
    assert after_fields["created_at"]["name"] == "io.debezium.time.ZonedTimestamp"
    assert after_fields["born"] == {"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1, "field": "born"}
    assert after_fields["seen"]["name"] == "io.debezium.time.MicroTimestamp"
    assert after_fields["attributes"]["name"] == "io.debezium.data.Json"
    assert after_fields["blob"]["type"] == "bytes"
    assert after_fields["ratio"]["type"] == "double"
    assert payload == make_event().to_debezium()


def test_key_json_with_and_without_schema() -> None:
    event = make_event()
    assert event.key_json() == {"id": 7}
    keyed = event.key_json(with_schema=True)
    assert keyed is not None
    assert keyed["payload"] == {"id": 7}
    assert keyed["schema"]["name"] == "legacy.public.catalog_product.Key"
    assert keyed["schema"]["fields"] == [{"type": "int32", "optional": False, "field": "id"}]


def test_truncate_has_no_key_or_rows() -> None:
    event = make_event(op="t", key=None, before=None, after=None)
    assert event.key_json() is None
    envelope = event.to_debezium(with_schema=True)["payload"]
    assert envelope["op"] == "t" and envelope["before"] is None and envelope["after"] is None


def test_types_inferred_when_columns_unknown() -> None:
    event = make_event(columns=None)
    message = event.to_debezium(with_schema=True)
    after_fields = {f["field"]: f for f in message["schema"]["fields"][1]["fields"]}
    assert after_fields["id"]["type"] == "int64"
    assert after_fields["created_at"]["name"] == "io.debezium.time.ZonedTimestamp"
    assert after_fields["price"]["type"] == "string"


def test_json_scalar_is_encoded_as_json_text_when_type_known() -> None:
    assert debezium_value("abc", "jsonb") == '"abc"'
    assert debezium_value(3, "json") == "3"
    assert debezium_value("abc", "text") == "abc"


def test_timestamptz_is_rendered_in_utc() -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    assert debezium_value(dt.datetime(2024, 1, 1, 2, 0, tzinfo=paris), "timestamptz") == "2024-01-01T00:00:00Z"
    assert debezium_value(dt.date(1969, 12, 31), "date") == -1


def test_unavailable_is_a_singleton_with_debezium_text() -> None:
    import pickle

    assert pickle.loads(pickle.dumps(UNAVAILABLE)) is UNAVAILABLE
    assert UNAVAILABLE.value == "__debezium_unavailable_value"
    assert repr(UNAVAILABLE) == "UNAVAILABLE"
