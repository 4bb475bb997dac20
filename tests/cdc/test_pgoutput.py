from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.events import UNAVAILABLE
from cdc.pgoutput import (
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    PgOutputError,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
    convert_value,
    decode,
    pg_time_to_unix_ms,
)
from tests.cdc.pgoutput_encoder import encode, pg_text

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
u8 = st.integers(0, 255)
names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
xids = st.one_of(st.none(), u32)
datum = st.one_of(
    st.none(),
    st.just(UNAVAILABLE),
    st.text(st.characters(codec="utf-8"), max_size=50),
    st.binary(max_size=50),
)
tuples = st.lists(datum, max_size=12).map(tuple)

relation_columns = st.builds(RelationColumn, st.integers(0, 1), names, u32, st.integers(-(2**31), 2**31 - 1))
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Begin, u64, i64, u32),
    st.builds(Commit, u8, u64, u64, i64),
    st.builds(Origin, u64, names),
    st.builds(Relation, xids, u32, names, names, st.sampled_from("dnfi"), st.lists(relation_columns, max_size=8).map(tuple)),
    st.builds(Type, xids, u32, names, names),
    st.builds(Insert, xids, u32, tuples),
    st.one_of(
        st.builds(Update, xids, u32, st.none(), st.none(), tuples),
        st.builds(Update, xids, u32, st.sampled_from("KO"), tuples, tuples),
    ),
    st.builds(Delete, xids, u32, st.sampled_from("KO"), tuples),
    st.builds(Truncate, xids, st.integers(0, 3), st.lists(u32, max_size=6).map(tuple)),
    st.builds(LogicalMessage, xids, st.integers(0, 1), u64, names, st.binary(max_size=100)),
    st.builds(StreamStart, u32, st.booleans()),
    st.just(StreamStop()),
    st.builds(StreamCommit, u32, u8, u64, u64, i64),
    st.builds(StreamAbort, u32, u32),
)

_HAS_XID = (Relation, Type, Insert, Update, Delete, Truncate, LogicalMessage)


@settings(max_examples=400)
@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    in_stream = isinstance(message, _HAS_XID) and message.xid is not None
    assert decode(encode(message), in_stream=in_stream) == message


@given(st.lists(st.builds(Insert, u32, u32, tuples), min_size=1, max_size=5), u32)
def test_decoder_reads_xids_only_inside_stream_blocks(inserts: list[Insert], xid: int) -> None:
    decoder = Decoder()
    plain = Insert(None, 5, ("a",))
    assert decoder.feed(encode(plain)) == plain
    assert decoder.feed(encode(StreamStart(xid, True))) == StreamStart(xid, True)
    for insert in inserts:
        assert decoder.feed(encode(insert)) == insert
    assert decoder.feed(encode(StreamStop())) == StreamStop()
    assert decoder.feed(encode(plain)) == plain


@given(messages, st.data())
def test_truncated_messages_raise_decoder_error(message: Message, data: st.DataObject) -> None:
    payload = encode(message)
    if len(payload) < 2:
        return
    cut = data.draw(st.integers(1, len(payload) - 1))
    in_stream = isinstance(message, _HAS_XID) and message.xid is not None
    try:
        decoded = decode(payload[:cut], in_stream=in_stream)
    except PgOutputError:
        return
    # A prefix may itself be a valid message only when the cut fell on a tuple/list boundary.
    assert decoded != message


def test_unknown_kind_and_trailing_bytes_are_errors() -> None:
    with pytest.raises(PgOutputError, match="unknown pgoutput message kind 'P'"):
        decode(b"P\x00")
    with pytest.raises(PgOutputError, match="trailing"):
        decode(encode(StreamStop()) + b"x")
    with pytest.raises(PgOutputError, match="empty"):
        decode(b"")


def test_commit_time_is_converted_from_postgres_epoch() -> None:
    assert pg_time_to_unix_ms(0) == 946_684_800_000
    assert pg_time_to_unix_ms(1_500) == 946_684_800_001


# -- value conversion ---------------------------------------------------------------------------

aware = st.datetimes(
    min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
    timezones=st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-7))]),
)
VALUES: dict[str, tuple[int, st.SearchStrategy[Any]]] = {
    "bool": (16, st.booleans()),
    "bytea": (17, st.binary(max_size=64)),
    "int2": (21, st.integers(-(2**15), 2**15 - 1)),
    "int4": (23, st.integers(-(2**31), 2**31 - 1)),
    "int8": (20, st.integers(-(2**63), 2**63 - 1)),
    "numeric": (1700, st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-10**12, max_value=10**12)),
    "text": (25, st.text(st.characters(codec="utf-8", exclude_characters="\x00"))),
    "varchar": (1043, st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=150)),
    "timestamptz": (1184, aware),
    "timestamp": (1114, st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31))),
    "date": (1082, st.dates()),
    "time": (1083, st.times()),
    "jsonb": (3802, st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
        max_leaves=12,
    )),
    "json": (114, st.dictionaries(st.text(max_size=5), st.integers(), max_size=4)),
    "uuid": (2950, st.uuids()),
    "float4": (700, st.floats(width=32, allow_nan=False)),
    "float8": (701, st.floats(allow_nan=False)),
}


@pytest.mark.parametrize("type_name", sorted(VALUES))
@settings(max_examples=150)
@given(data=st.data())
def test_value_conversion_round_trips(type_name: str, data: st.DataObject) -> None:
    oid, strategy = VALUES[type_name]
    value = data.draw(strategy)
    converted = convert_value(oid, pg_text(type_name, value))
    if type_name == "timestamptz":
        assert converted == value and converted.utcoffset() == dt.timedelta(0)
    else:
        assert converted == value
        assert type(converted) is type(value)


def test_special_values() -> None:
    assert convert_value(23, None) is None
    assert convert_value(25, UNAVAILABLE) is UNAVAILABLE
    assert convert_value(23, b"\x00\x00\x00\x01") == b"\x00\x00\x00\x01"
    assert math.isnan(convert_value(701, "NaN"))
    assert convert_value(701, "-Infinity") == float("-inf")
    assert convert_value(1700, "NaN").is_nan()
    assert convert_value(1700, "12.50") == Decimal("12.50")
    assert str(convert_value(1700, "12.50")) == "12.50"
    assert convert_value(1082, "infinity") == dt.date.max
    assert convert_value(1184, "2024-03-01 10:00:00+01") == dt.datetime(2024, 3, 1, 9, tzinfo=dt.timezone.utc)
    assert convert_value(1266, "10:00:00+05:30") == dt.time(10, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert convert_value(1266, "10:00:00-07") == dt.time(10, tzinfo=dt.timezone(dt.timedelta(hours=-7)))
    assert convert_value(2950, "12345678-1234-5678-1234-567812345678") == uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert convert_value(1186, "1 day") == "1 day"  # no converter: kept as text


def test_bad_value_error_names_the_value_and_type() -> None:
    with pytest.raises(PgOutputError, match=r"cannot read 'abc' as int4"):
        convert_value(23, "abc")
    with pytest.raises(PgOutputError, match="bytea_output = 'hex'"):
        convert_value(17, "abc")
