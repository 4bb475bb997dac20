"""Rows in pgoutput's text form: read as the same Python values, raw text where it is portable."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.events import UNAVAILABLE
from cdc.pgoutput import PgOutputError, RelationColumn, convert_value
from cdc.textrow import RowLayout, TextRow, portable_time
from tests.cdc.pgoutput_encoder import pg_text

OIDS = {"int4": 23, "text": 25, "numeric": 1700, "bool": 16, "jsonb": 3802, "timestamptz": 1184, "bytea": 17}


def layout(*columns: tuple[str, str]) -> RowLayout:
    return RowLayout(tuple(RelationColumn(0, name, OIDS[type_name], -1) for name, type_name in columns))


PRODUCT = layout(("id", "int4"), ("name", "text"), ("price", "numeric"), ("active", "bool"), ("attributes", "jsonb"),
                 ("created_at", "timestamptz"), ("picture", "bytea"))


def test_values_read_as_python_values_once() -> None:
    values = ("7", "Hammer", "19.99", "t", '{"color": "red"}', "2024-05-01 12:00:00+00", None)
    row = TextRow(PRODUCT, values)
    assert dict(row) == {
        "id": 7, "name": "Hammer", "price": Decimal("19.99"), "active": True, "attributes": {"color": "red"},
        "created_at": dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc), "picture": None,
    }
    assert row["attributes"] is row["attributes"]  # converted once
    assert row == dict(row) and dict(row) == row
    assert list(row) == ["id", "name", "price", "active", "attributes", "created_at", "picture"]
    assert len(row) == 7 and "price" in row and "missing" not in row and row.get("missing") is None
    assert row.raw("price") == "19.99" and row.raw("picture") is None
    assert repr(row) == repr(dict(row))


def test_raw_text_is_portable_except_times_outside_utc() -> None:
    assert portable_time("2024-05-01 12:00:00+00") and portable_time(None) and portable_time(UNAVAILABLE)
    assert portable_time("infinity") and not portable_time("2024-05-01 14:00:00+02")
    zoned = TextRow(PRODUCT, ("1", "a", "1.00", "f", "{}", "2024-05-01 14:00:00+02", UNAVAILABLE))
    assert zoned["created_at"] == dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc)
    assert zoned.raw("picture") is UNAVAILABLE and zoned["picture"] is UNAVAILABLE


def test_unreadable_value_raises_when_read() -> None:
    row = TextRow(PRODUCT, ("x1", "a", "1.00", "f", "{}", "2024-05-01 12:00:00+00", None))
    assert row.raw("id") == "x1"
    with pytest.raises(PgOutputError, match=r"cannot read 'x1' as int4"):
        row["id"]


@given(st.tuples(
    st.integers(-(2**31), 2**31 - 1),
    st.text(),
    st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-10**6, max_value=10**6),
    st.booleans(),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    st.datetimes(timezones=st.just(dt.timezone.utc), min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)),
    st.binary(max_size=8),
))
def test_reads_like_convert_value(values: tuple[Any, ...]) -> None:
    types = ("int4", "text", "numeric", "bool", "jsonb", "timestamptz", "bytea")
    texts = tuple(pg_text(t, v) for t, v in zip(types, values, strict=True))
    row = TextRow(PRODUCT, texts)
    assert dict(row) == {name: convert_value(OIDS[t], text) for name, t, text in zip(row, types, texts, strict=True)}
