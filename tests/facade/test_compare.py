from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.compare import (
    CompareError,
    CompareRules,
    DiffKind,
    Normalizer,
    PathPattern,
    Reply,
    compare,
    field_of,
    rules_from,
)

JSON = {"content-type": "application/json"}


def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Reply(status=status, headers=headers or JSON, body=raw)


def kinds(a: Any, b: Any, rules: CompareRules | None = None) -> set[tuple[str, str]]:
    return {(d.path, d.kind.value) for d in compare(reply(a), reply(b), rules).differences}


def test_equal_bodies_with_different_key_order_match() -> None:
    a = b'{"a": 1, "b": [1, 2, {"c": null}]}'
    b = b'{"b": [1, 2, {"c": null}], "a": 1}'
    assert compare(reply(a), reply(b)).matches


def test_value_type_missing_extra_are_flattened_to_paths() -> None:
    a = {"results": [{"id": 1, "price": "1.00", "name": "x"}], "count": 1}
    b = {"results": [{"id": 1, "price": 1.0, "slug": "x"}], "count": 2}
    assert kinds(a, b) == {
        ("$.results[0].price", "type"),
        ("$.results[0].name", "missing"),
        ("$.results[0].slug", "extra"),
        ("$.count", "value"),
    }


def test_bool_and_number_are_different_types_but_int_and_float_are_equal_numbers() -> None:
    assert kinds({"a": True}, {"a": 1}) == {("$.a", "type")}
    assert kinds({"a": 1}, {"a": 1.0}) == set()
    assert kinds({"a": None}, {"a": "x"}) == {("$.a", "type")}


def test_booleans_standing_for_numbers_are_found_even_when_they_balance_out() -> None:
    # `==` holds for each pair below (True == 1), and both sides hold as many `true` as numbers.
    assert kinds({"a": True, "b": 1}, {"a": 1, "b": True}) == {("$.a", "type"), ("$.b", "type")}
    assert kinds({"r": [{"x": True}, {"x": 1}]}, {"r": [{"x": 1}, {"x": True}]}) == {("$.r", "array_order")}
    assert kinds({"r": [False, 0, 5]}, {"r": [0, 0, 5]}) == {("$.r[0]", "type")}
    keyed = CompareRules(array_keys={"$.r": "id"})
    assert kinds({"r": [{"id": 1, "on": True}, {"id": 2, "on": 1}]}, {"r": [{"id": 1, "on": 1}, {"id": 2, "on": 1}]}, keyed) == {("$.r[id=1].on", "type")}


def test_reordered_array_is_reported_once_as_array_order() -> None:
    assert kinds({"r": [1, 2, 3]}, {"r": [3, 1, 2]}) == {("$.r", "array_order")}


def test_array_length_difference() -> None:
    assert kinds({"r": [1, 2, 3]}, {"r": [1, 2]}) == {("$.r", "array_length")}


def test_unordered_rule_accepts_any_order() -> None:
    rules = CompareRules(unordered=("$.r",))
    assert kinds({"r": [1, 2, 3]}, {"r": [3, 1, 2]}, rules) == set()
    assert kinds({"r": [1, 2, 3]}, {"r": [3, 1, 4]}, rules) == {("$.r[*]", "value")}


def test_array_matched_by_key_reports_per_element() -> None:
    rules = CompareRules(array_keys={"$.results": "id"})
    a = {"results": [{"id": 1, "p": 1}, {"id": 2, "p": 2}, {"id": 3, "p": 3}]}
    b = {"results": [{"id": 2, "p": 2}, {"id": 1, "p": 9}, {"id": 4, "p": 4}]}
    assert kinds(a, b, rules) == {
        ("$.results[id=1].p", "value"),
        ("$.results[id=3]", "missing"),
        ("$.results[id=4]", "extra"),
        ("$.results", "array_order"),
    }


def test_ignore_paths_with_wildcards_and_descendants() -> None:
    a = {"results": [{"updated_at": "1", "x": {"updated_at": "1"}}], "meta": {"took": 1}}
    b = {"results": [{"updated_at": "2", "x": {"updated_at": "2"}}], "meta": {"took": 2}}
    assert kinds(a, b, CompareRules(ignore=("$..updated_at", "$.meta"))) == set()
    assert kinds(a, b, CompareRules(ignore=("$.results[*].updated_at",))) == {
        ("$.results[0].x.updated_at", "value"),
        ("$.meta.took", "value"),
    }


def test_normalize_regex_and_numeric_tolerance() -> None:
    rules = CompareRules(
        normalize=(Normalizer(r"\d{4}-\d\d-\d\dT[\d:.]+Z", "<ts>"),),
        tolerance=0.01,
    )
    a = {"at": "2024-01-01T00:00:00Z", "v": 1.000}
    b = {"at": "2025-02-02T10:00:00.5Z", "v": 1.005}
    assert kinds(a, b, rules) == set()
    assert kinds(a, {"at": "soon", "v": 1.5}, rules) == {("$.at", "value"), ("$.v", "value")}


def test_tolerance_per_path() -> None:
    rules = rules_from(tolerance={"$.a": 0.5})
    assert kinds({"a": 1.0, "b": 1.0}, {"a": 1.4, "b": 1.4}, rules) == {("$.b", "value")}


def test_status_and_configured_headers() -> None:
    a = Reply(200, {"content-type": "text/plain", "x-a": "1", "x-b": "b"}, b"ok")
    b = Reply(500, {"content-type": "text/plain", "x-a": "2", "x-c": "c"}, b"ok")
    found = {(d.path, d.kind) for d in compare(a, b, CompareRules(headers=("X-A", "x-b", "x-c"))).differences}
    assert found == {
        ("status", DiffKind.VALUE),
        ("headers.x-a", DiffKind.VALUE),
        ("headers.x-b", DiffKind.MISSING),
        ("headers.x-c", DiffKind.EXTRA),
    }


def test_text_bodies_get_a_line_summary() -> None:
    a = Reply(200, {"content-type": "text/html"}, b"<p>\nhello\n</p>\n")
    b = Reply(200, {"content-type": "text/html"}, b"<p>\nhullo\nworld\n</p>\n")
    (diff,) = compare(a, b).differences
    assert diff.path == "body" and diff.kind is DiffKind.TEXT
    assert diff.primary is not None and "1 line(s) removed, 2 added" in diff.primary


def test_json_against_non_json_is_a_type_difference() -> None:
    a = reply({"a": 1})
    b = Reply(200, {"content-type": "text/html"}, b"<html>")
    assert [(d.path, d.kind) for d in compare(a, b).differences] == [("$", DiffKind.TYPE)]


def test_field_generalises_positions_and_keys() -> None:
    assert field_of("$.results[3].price") == "$.results[*].price"
    assert field_of("$.results[id=7].tags[0]") == "$.results[*].tags[*]"


def test_path_pattern_selects_subtrees_only_at_segment_boundaries() -> None:
    p = PathPattern("$.a")
    assert p.matches("$.a") and p.matches("$.a.b") and p.matches("$.a[0]")
    assert not p.matches("$.ab")
    assert PathPattern("$.*.x").matches("$.q.x")
    assert PathPattern("status").matches("status")


def test_bad_rules_quote_the_value() -> None:
    with pytest.raises(CompareError, match=r"'\('"):
        CompareRules(normalize=(Normalizer("("),))
    with pytest.raises(CompareError, match=r"'\$\.a\['"):
        CompareRules(ignore=("$.a[",))


def test_rules_from_plain_config_values() -> None:
    rules = rules_from(normalize=[{"pattern": "[0-9]+", "replace": "N"}, ("x", "y")], ignore=["$.t"])
    assert kinds({"a": "id-1", "t": 1}, {"a": "id-22", "t": 2}, rules) == set()


def test_difference_limit() -> None:
    a = {str(i): i for i in range(50)}
    b = {str(i): i + 1 for i in range(50)}
    assert len(compare(reply(a), reply(b), limit=10).differences) == 10


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from([0.5, 1.0, 2.5]) | st.sampled_from(["", "a", "b"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from("abcd"), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_property_a_value_never_differs_from_itself(value: Any) -> None:
    assert compare(reply(value), reply(json.loads(json.dumps(value)))).matches


@settings(max_examples=300, deadline=None)
@given(json_values, json_values, st.booleans())
def test_property_diff_is_symmetric(a: Any, b: Any, keyed: bool) -> None:
    rules = CompareRules(unordered=("$.a",), array_keys={"$.b": "a"} if keyed else {})
    forward = {(d.path, d.kind) for d in compare(reply(a), reply(b), rules).differences}
    backward = {(d.path, d.kind.mirrored()) for d in compare(reply(b), reply(a), rules).differences}
    assert forward == backward


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_property_match_means_equal_json(a: Any, b: Any) -> None:
    assert compare(reply(a), reply(b)).matches == (_canonical(a) == _canonical(b))


def _canonical(value: Any) -> str:
    # 1 and 1.0 are the same JSON number; true stays a boolean.
    return json.dumps(json.loads(json.dumps(value), parse_int=float), sort_keys=True)
