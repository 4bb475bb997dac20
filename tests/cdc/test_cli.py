"""The CDC commands: `cdc apply --from-file` with real-Debezium-format events, `verify`, `status`."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from scripts.cli import app
from tests.cdc.apply_fixtures import SYNC_YAML, execute, legacy_and_target, query

__all__ = ["legacy_and_target"]

runner = CliRunner()

SOURCE = {"version": "2.5.0.Final", "connector": "postgresql", "name": "legacy", "ts_ms": 1714564800000,
          "snapshot": "false", "db": "legacy", "schema": "public", "table": "catalog_product", "txId": 1, "xmin": None}

PRICE_FIELDS = {
    "precise": {"type": "bytes", "optional": False, "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                "parameters": {"scale": "2", "connect.decimal.precision": "10"}, "field": "price"},
    "string": {"type": "string", "optional": False, "field": "price"},
    "double": {"type": "double", "optional": False, "field": "price"},
    # What precise mode sends for a numeric column without a declared scale.
    "variable": {"type": "struct", "optional": False, "name": "io.debezium.data.VariableScaleDecimal", "version": 1,
                 "fields": [{"type": "int32", "optional": False, "field": "scale"},
                            {"type": "bytes", "optional": False, "field": "value"}], "field": "price"},
}
# 12.30 in each mode: base64 of 1230 (0x04CE) for precise (with its scale for variable), a string, a double.
PRICE_VALUES: dict[str, Any] = {"precise": "BM4=", "string": "12.30", "double": 12.3, "variable": {"scale": 2, "value": "BM4="}}


def _fields(mode: str) -> list[dict[str, Any]]:
    return [
        {"type": "int32", "optional": False, "field": "id"},
        {"type": "string", "optional": False, "field": "sku"},
        {"type": "string", "optional": False, "field": "name"},
        {"type": "string", "optional": False, "field": "slug"},
        {"type": "string", "optional": False, "field": "description"},
        PRICE_FIELDS[mode],
        {"type": "int32", "optional": False, "field": "stock"},
        {"type": "boolean", "optional": False, "field": "is_active"},
        {"type": "int32", "optional": False, "field": "category_id"},
        {"type": "string", "optional": False, "name": "io.debezium.data.Json", "version": 1, "field": "attributes"},
        {"type": "string", "optional": False, "name": "io.debezium.time.ZonedTimestamp", "version": 1, "field": "created_at"},
        {"type": "string", "optional": False, "name": "io.debezium.time.ZonedTimestamp", "version": 1, "field": "updated_at"},
    ]


def _row(pid: int, mode: str, **changes: Any) -> dict[str, Any]:
    row = {"id": pid, "sku": f"SKU-{pid}", "name": f"Product {pid}", "slug": f"p-{pid}", "description": "long text " * 50,
           "price": PRICE_VALUES[mode], "stock": 3, "is_active": True, "category_id": 1,
           "attributes": "{\"color\":\"red\"}", "created_at": "2024-05-01T12:00:00Z", "updated_at": "2024-05-01T12:00:00Z"}
    row.update(changes)
    return row


def _envelope(op: str, lsn: int, *, mode: str, with_schema: bool, before: Any = None, after: Any = None) -> dict[str, Any]:
    payload = {"before": before, "after": after, "op": op, "ts_ms": 1714564800100, "transaction": None,
               "source": {**SOURCE, "lsn": lsn, "sequence": json.dumps([str(lsn - 8), str(lsn)]),
                          "snapshot": "true" if op == "r" else "false"}}
    if not with_schema:
        return payload
    row_schema = {"type": "struct", "optional": True, "name": "legacy.public.catalog_product.Value", "fields": _fields(mode)}
    return {"schema": {"type": "struct", "optional": False, "name": "legacy.public.catalog_product.Envelope", "fields": [
        {**row_schema, "field": "before"}, {**row_schema, "field": "after"},
        {"type": "struct", "fields": [], "optional": False, "field": "source"},
        {"type": "string", "optional": False, "field": "op"}]}, "payload": payload}


def _events(mode: str, with_schema: bool) -> list[Any]:
    e = lambda *a, **k: _envelope(*a, mode=mode, with_schema=with_schema, **k)  # noqa: E731
    return [
        e("r", 1000, after=_row(1, mode)),
        e("c", 1100, after=_row(2, mode)),
        e("c", 1200, after=_row(3, mode)),
        # An update that did not touch the TOASTed description: the placeholder must not be written.
        e("u", 1300, before=None, after=_row(1, mode, description="__debezium_unavailable_value", stock=9)),
        e("d", 1400, before={"id": 2}, after=None),
        None,  # the tombstone Debezium writes after a delete
        e("u", 1500, before=None, after=_row(3, mode, name="Renamed")),
    ]


def _write(tmp_path: Path, lines: list[Any]) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_apply_debezium_events_every_decimal_mode_with_and_without_schema(
    legacy_and_target: tuple[str, str], tmp_path: Path
) -> None:
    _, target = legacy_and_target
    for with_schema in (True, False):
        for mode in PRICE_VALUES:
            lines = _events(mode, with_schema)
            path = _write(tmp_path, lines)
            result = runner.invoke(app, ["cdc", "apply", "--spec", str(SYNC_YAML), "--from-file", str(path),
                                         "--target-url", target, "--json"])
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["dead_lettered"] == 0
            rows = query(target, "SELECT id, title, price_cents, stock, description, attributes->>'color' FROM catalog.products ORDER BY id")
            assert rows == [(1, "Product 1", 1230, 9, "long text " * 50, "red"), (3, "Renamed", 1230, 3, "long text " * 50, "red")], (mode, with_schema)
            # Applying the same file again changes nothing (redelivery).
            again = runner.invoke(app, ["cdc", "apply", "--spec", str(SYNC_YAML), "--from-file", str(path), "--target-url", target, "--json"])
            assert json.loads(again.stdout)["applied"] == 0
            execute(target, "TRUNCATE catalog.products, strangler.row_position, strangler.checkpoint")


def _apply(spec: Path, path: Path, target: str) -> dict[str, int]:
    result = runner.invoke(app, ["cdc", "apply", "--spec", str(spec), "--from-file", str(path), "--target-url", target, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _truncate(lsn: int, with_schema: bool) -> dict[str, Any]:
    """Debezium's truncate event: no before or after, no key."""
    payload = {"op": "t", "ts_ms": 1714564800200, "source": {**SOURCE, "lsn": lsn, "sequence": json.dumps([str(lsn), str(lsn)])}}
    if not with_schema:
        return payload
    return {"schema": {"type": "struct", "optional": False, "name": "legacy.public.catalog_product.Envelope", "fields": [
        {"type": "struct", "fields": [], "optional": False, "field": "source"},
        {"type": "string", "optional": False, "field": "op"}]}, "payload": payload}


def test_apply_debezium_truncate_empties_the_service_table(legacy_and_target: tuple[str, str], tmp_path: Path) -> None:
    _, target = legacy_and_target
    for with_schema in (True, False):
        e = lambda *a, **k: _envelope(*a, mode="string", with_schema=with_schema, **k)  # noqa: E731
        lines = [e("c", 1100, after=_row(1, "string")), e("c", 1200, after=_row(2, "string")),
                 _truncate(1300, with_schema), e("c", 1400, after=_row(3, "string"))]
        path = _write(tmp_path, lines)
        assert _apply(SYNC_YAML, path, target)["dead_lettered"] == 0
        assert query(target, "SELECT id FROM catalog.products ORDER BY id") == [(3,)], with_schema
        # Redelivered: the inserts before the truncate stay out, the truncate does not run again.
        assert _apply(SYNC_YAML, path, target)["applied"] == 0
        assert query(target, "SELECT id FROM catalog.products ORDER BY id") == [(3,)], with_schema
        execute(target, "TRUNCATE catalog.products, strangler.row_position, strangler.table_position, strangler.checkpoint")


SHIPPING_SPEC = """\
version: 1
name: shipping
source: {topic_prefix: legacy}
target: {url: ""}
tables:
  - source: public.shipping_shipment
    target: shipping.shipments
    key: [id]
    columns: {id: id, shipped_at: shipped_at, confirmed_at: confirmed_at, due_on: due_on, weight_kg: weight_kg}
"""

SHIPPING_FIELDS = [
    {"type": "int32", "optional": False, "field": "id"},
    {"type": "int64", "optional": True, "name": "io.debezium.time.MicroTimestamp", "version": 1, "field": "shipped_at"},
    {"type": "string", "optional": True, "name": "io.debezium.time.ZonedTimestamp", "version": 1, "field": "confirmed_at"},
    {"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1, "field": "due_on"},
    {**PRICE_FIELDS["variable"], "optional": True, "field": "weight_kg"},
]


def _shipment(op: str, lsn: int, after: dict[str, Any]) -> dict[str, Any]:
    source = {**SOURCE, "table": "shipping_shipment", "lsn": lsn, "sequence": json.dumps([str(lsn), str(lsn)]),
              "snapshot": "true" if op == "r" else "false"}
    row = {"type": "struct", "optional": True, "name": "legacy.public.shipping_shipment.Value", "fields": SHIPPING_FIELDS}
    return {"schema": {"type": "struct", "optional": False, "name": "legacy.public.shipping_shipment.Envelope", "fields": [
        {**row, "field": "before"}, {**row, "field": "after"},
        {"type": "struct", "fields": [], "optional": False, "field": "source"},
        {"type": "string", "optional": False, "field": "op"}]},
        "payload": {"before": None, "after": after, "op": op, "ts_ms": 1714564800300, "source": source}}


def _shipping_store(target: str, tmp_path: Path) -> Path:
    """The shipping service's table in the target; returns the path of its sync spec."""
    execute(target, "CREATE SCHEMA shipping; CREATE TABLE shipping.shipments (id int PRIMARY KEY, shipped_at timestamp,"
                    " confirmed_at timestamptz, due_on date, weight_kg numeric)")
    spec = tmp_path / "shipping.yaml"
    spec.write_text(SHIPPING_SPEC)
    return spec


def test_apply_debezium_temporal_and_variable_scale_values_into_their_column_types(
    legacy_and_target: tuple[str, str], tmp_path: Path
) -> None:
    _, target = legacy_and_target
    spec = _shipping_store(target, tmp_path)
    path = _write(tmp_path, [
        _shipment("r", 1000, {"id": 1, "shipped_at": 1714564800123456, "confirmed_at": "2024-05-01T14:00:00.5+02:00",
                              "due_on": 19844, "weight_kg": {"scale": 3, "value": "MDk="}}),  # 12345
        _shipment("c", 1100, {"id": 2, "shipped_at": -1000000, "confirmed_at": "1999-12-31T23:59:59Z",
                              "due_on": -1, "weight_kg": {"scale": 0, "value": "/w=="}}),  # -1
        _shipment("u", 1200, {"id": 1, "shipped_at": 1714564800123456, "confirmed_at": "2024-05-01T14:00:00.5+02:00",
                              "due_on": None, "weight_kg": {"scale": 1, "value": "AQ=="}}),  # 0.1
    ])
    assert _apply(spec, path, target) == {"applied": 2, "skipped": 0, "dead_lettered": 0}  # row 1: its update wins
    utc = dt.timezone.utc
    assert query(target, "SELECT id, shipped_at, confirmed_at, due_on, weight_kg FROM shipping.shipments ORDER BY id") == [
        (1, dt.datetime(2024, 5, 1, 12, 0, 0, 123456), dt.datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=utc), None,
         Decimal("0.1")),
        (2, dt.datetime(1969, 12, 31, 23, 59, 59), dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=utc), dt.date(1969, 12, 31),
         Decimal("-1")),
    ]


def test_apply_schemaless_variable_scale_decimal_into_a_numeric_column(
    legacy_and_target: tuple[str, str], tmp_path: Path
) -> None:
    """JSON converter with `schemas.enable=false`: a VariableScaleDecimal is a bare {scale, value}."""
    _, target = legacy_and_target
    spec = _shipping_store(target, tmp_path)
    empty = {"shipped_at": None, "confirmed_at": None, "due_on": None}
    path = _write(tmp_path, [
        _shipment("c", 1000, {"id": 1, **empty, "weight_kg": {"scale": 3, "value": "MDk="}})["payload"],  # 12.345
        _shipment("c", 1100, {"id": 2, **empty, "weight_kg": {"scale": 0, "value": "/w=="}})["payload"],  # -1
        _shipment("c", 1200, {"id": 3, **empty, "weight_kg": None})["payload"],
    ])
    assert _apply(spec, path, target) == {"applied": 3, "skipped": 0, "dead_lettered": 0}
    assert query(target, "SELECT id, weight_kg FROM shipping.shipments ORDER BY id") == [
        (1, Decimal("12.345")), (2, Decimal("-1")), (3, None)]


def test_apply_bad_file_names_the_line(legacy_and_target: tuple[str, str], tmp_path: Path) -> None:
    _, target = legacy_and_target
    path = tmp_path / "bad.jsonl"
    path.write_text('{"op": "c"}\nnot json\n')
    result = runner.invoke(app, ["cdc", "apply", "--spec", str(SYNC_YAML), "--from-file", str(path), "--target-url", target])
    assert result.exit_code != 0
    assert "bad.jsonl:1:" in str(result.exception)


def test_verify_exit_codes_and_status_json(legacy_and_target: tuple[str, str], tmp_path: Path) -> None:
    legacy, target = legacy_and_target
    args = ["--spec", str(SYNC_YAML), "--source-url", legacy, "--target-url", target]
    clean = runner.invoke(app, ["verify", *args, "--json", "--wait", "0"])
    assert clean.exit_code == 0, clean.output
    assert json.loads(clean.stdout)["identical"] is True
    execute(target, "INSERT INTO catalog.categories VALUES (5, 'x', 'x', NULL)")
    dirty = runner.invoke(app, ["verify", *args, "--wait", "0"])
    assert dirty.exit_code == 1 and "only_in_target" in dirty.stdout
    status = runner.invoke(app, ["cdc", "status", *args, "--json"])
    assert status.exit_code == 0, status.output
    data = json.loads(status.stdout)
    assert data["slot_exists"] is False and data["dead_letters"] == 0
