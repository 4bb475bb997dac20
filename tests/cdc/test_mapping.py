"""Row mapping through the spec: renames, transforms, filters, errors."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.events import UNAVAILABLE
from cdc.exceptions import MappingError, SchemaChangedError
from cdc.mapping import RowMapper, to_decimal
from cdc.spec import parse_spec
from tests.cdc.apply_fixtures import product, spec_for, text_row

SPEC = spec_for(None, None)
PRODUCTS = RowMapper(SPEC.tables[1])


def test_product_renames_and_cents() -> None:
    row = PRODUCTS.map(product(3, price=Decimal("12.30"), extra_new_column="ignored"))
    assert row is not None
    assert row["title"] == "Product 3" and row["price_cents"] == 1230 and row["active"] is True
    assert "extra_new_column" not in row and "name" not in row


@pytest.mark.parametrize("price", [Decimal("12.30"), "12.30", 12.3, "BM4=", 12])
def test_cents_from_every_encoding(price: Any) -> None:
    # "BM4=" is 1230 as big-endian bytes: Debezium precise mode without a schema (scale 2 in the spec).
    expected = 1200 if price == 12 else 1230
    assert PRODUCTS.map(product(1, price=price))["price_cents"] == expected  # type: ignore[index]


@pytest.mark.parametrize("price", ["abc!", Decimal("1.234"), True])
def test_unmappable_values_raise_mapping_error(price: Any) -> None:
    with pytest.raises(MappingError) as info:
        PRODUCTS.map(product(1, price=price))
    assert "catalog_product.price" in str(info.value)


def test_filter_drops_internal_rows() -> None:
    assert PRODUCTS.map(product(1, sku="__internal-1")) is None
    assert PRODUCTS.map(product(1, sku="X-1")) is not None


def test_unavailable_passes_through_untransformed() -> None:
    row = PRODUCTS.map(product(1, description=UNAVAILABLE, attributes=UNAVAILABLE))
    assert row is not None and row["description"] is UNAVAILABLE and row["attributes"] is UNAVAILABLE


def test_dropped_column_is_a_schema_change() -> None:
    row = product(1)
    del row["price"]
    with pytest.raises(SchemaChangedError) as info:
        PRODUCTS.map(row)
    assert "catalog_product.price" in str(info.value)


def test_python_transforms() -> None:
    text = """
name: t
tables:
  - source: public.catalog_product
    target: catalog.products
    columns:
      id: id
      name: {to: title, transform: "tests.cdc.test_mapping:shout"}
    transform: "tests.cdc.test_mapping:drop_odd"
"""
    mapper = RowMapper(parse_spec(text, env={}).tables[0])
    assert mapper.map({"id": 2, "name": "a"}) == {"id": 2, "title": "A!"}
    assert mapper.map({"id": 3, "name": "a"}) is None
    with pytest.raises(MappingError):
        mapper.map({"id": 2, "name": 5})


def shout(value: str) -> str:
    return value.upper() + "!"


def drop_odd(row: dict[str, Any]) -> dict[str, Any] | None:
    return None if row["id"] % 2 else row


@given(st.decimals(min_value=Decimal("-99999999.99"), max_value=Decimal("99999999.99"), places=2))
def test_cents_is_exact_for_two_place_decimals(value: Decimal) -> None:
    cents = PRODUCTS.map(product(1, price=value))["price_cents"]  # type: ignore[index]
    assert Decimal(cents) / 100 == value
    assert to_decimal(str(value)) == value


def test_raw_text_keeps_the_server_text_of_copied_columns() -> None:
    row = text_row(product(4, stock=7))
    raw = PRODUCTS.map(row, raw_text=True)
    assert raw is not None
    assert raw["stock"] == "7" and raw["title"] == "Product 4" and raw["attributes"] == '{"color": "red"}'
    assert raw["price_cents"] == 1999 and raw["created_at"] == "2024-05-01 12:00:00+00"
    assert PRODUCTS.map(row) == PRODUCTS.map(product(4, stock=7))  # typed unless asked
    assert PRODUCTS.map(text_row(product(5, sku="__internal-5")), raw_text=True) is None  # filters still apply


def test_variable_scale_decimals_read_with_the_debezium_decoder() -> None:
    # 1230 at scale 2, as Debezium's VariableScaleDecimal without a schema.
    assert to_decimal({"scale": 2, "value": "BM4="}) == Decimal("12.30")
    assert PRODUCTS.map(product(1, price={"scale": 2, "value": "BM4="}))["price_cents"] == 1230  # type: ignore[index]
    with pytest.raises(MappingError, match="scale that is not an integer"):
        to_decimal({"scale": "x", "value": "BM4="})
    with pytest.raises(MappingError, match="not base64"):
        to_decimal({"scale": 2, "value": "!!"})
    with pytest.raises(MappingError, match="neither a number nor a base64"):
        to_decimal("!!", 2)
