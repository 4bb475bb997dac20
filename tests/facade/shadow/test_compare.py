from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.shadow.compare import DiffKind, Reply, compare, field_of
from facade.shadow.exceptions import CompareError
from facade.shadow.rules import CompareRules, Normalizer, PathPattern, rules_from

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


# Large bodies take fast paths: a probe of key order picks the serialisation that proves subtrees
# the same, objects with the same key order are compared member by member in C, keyed arrays name
# integer keys by themselves. The tests below use bodies large enough to take them, serialised with
# sorted keys on one side where that matters, and each would fail if a fast path skipped a proof.


def products(n: int = 300) -> dict[str, Any]:
    return {
        "count": n,
        "results": [
            {"id": i, "name": f"p{i}", "price": i % 10, "on": i % 3 == 0, "attrs": {"size": i % 2, "tags": ["a", True]}}
            for i in range(n)
        ],
    }


def sorted_reply(body: Any) -> Reply:
    return reply(json.dumps(body, sort_keys=True).encode())


def test_large_equal_bodies_match_whatever_the_key_order() -> None:
    doc = products()
    assert compare(reply(doc), sorted_reply(doc)).matches
    assert compare(sorted_reply(doc), reply(doc)).matches
    assert compare(reply(doc), reply(json.loads(json.dumps(doc)))).matches


def test_large_bodies_a_boolean_for_a_number_is_found_in_any_key_order() -> None:
    doc = products()
    other = json.loads(json.dumps(doc))
    other["results"][150]["price"] = False  # was 0: `==` holds, the type does not
    other["results"][151]["on"] = 0  # was false
    expected = {("$.results[150].price", "type"), ("$.results[151].on", "type")}
    assert {(d.path, d.kind.value) for d in compare(reply(doc), reply(other)).differences} == expected
    assert {(d.path, d.kind.value) for d in compare(reply(doc), sorted_reply(other)).differences} == expected
    assert {(d.path, d.kind.value) for d in compare(sorted_reply(doc), reply(other)).differences} == expected


def test_large_bodies_booleans_that_balance_out_deep_inside_are_found() -> None:
    doc = products()
    other = json.loads(json.dumps(doc))
    other["results"][7]["attrs"]["tags"][1] = 1
    other["results"][8]["attrs"]["size"] = True  # was 0: not even `==`
    other["results"][9]["attrs"]["size"] = True  # was 1: `==` holds, the type does not
    found = {(d.path, d.kind.value) for d in compare(reply(doc), sorted_reply(other)).differences}
    assert found == {
        ("$.results[7].attrs.tags[1]", "type"),
        ("$.results[8].attrs.size", "type"),
        ("$.results[9].attrs.size", "type"),
    }


def test_large_bodies_integer_and_float_are_equal_numbers_in_any_key_order() -> None:
    doc = products()
    other = json.loads(json.dumps(doc))
    other["results"][42]["price"] = float(other["results"][42]["price"])
    other["count"] = float(other["count"])
    assert compare(reply(doc), reply(other)).matches
    assert compare(reply(doc), sorted_reply(other)).matches


def test_large_bodies_a_missing_key_in_one_of_hundreds_of_equal_objects() -> None:
    doc = products()
    other = json.loads(json.dumps(doc))
    del other["results"][250]["name"]
    other["results"][251]["extra"] = 1
    expected = {("$.results[250].name", "missing"), ("$.results[251].extra", "extra")}
    for candidate in (reply(other), sorted_reply(other)):
        assert {(d.path, d.kind.value) for d in compare(reply(doc), candidate).differences} == expected
        assert {(d.path, d.kind.value) for d in compare(candidate, reply(doc)).differences} == {(p, "extra" if k == "missing" else "missing") for p, k in expected}


def test_key_order_differing_only_deep_inside_matches() -> None:
    doc = products()
    other = json.loads(json.dumps(doc))
    attrs = other["results"][200]["attrs"]
    other["results"][200]["attrs"] = dict(reversed(list(attrs.items())))
    assert compare(reply(doc), reply(other)).matches
    other["results"][200]["attrs"]["tags"][1] = 1
    assert kinds(doc, other) == {("$.results[200].attrs.tags[1]", "type")}


def test_objects_with_the_same_key_order_prove_their_equal_members() -> None:
    # `b` differs, so the object is walked; `a` is equal by `==` and must still be checked for types.
    assert kinds({"a": {"x": True}, "b": 1}, {"a": {"x": 1}, "b": 2}) == {("$.a.x", "type"), ("$.b", "value")}
    assert kinds({"a": [1, False], "b": 1, "c": 1}, {"a": [1, 0], "b": 2, "c": 1.0}) == {("$.a[1]", "type"), ("$.b", "value")}


def test_large_arrays_of_scalars_prove_their_equal_members() -> None:
    a = {"r": [1] * 40 + [True]}
    b = {"r": [1] * 40 + [1]}
    assert kinds(a, b) == {("$.r[40]", "type")}
    assert kinds({"r": [1.0] * 40 + [2]}, {"r": [1] * 40 + [3]}) == {("$.r[40]", "value")}


def test_negative_and_positive_zero_are_the_same_member_of_a_reordered_array() -> None:
    assert kinds({"r": [1, 2, -0.0]}, {"r": [2, 1, 0.0]}) == {("$.r", "array_order")}


def test_keyed_arrays_name_integer_and_string_keys_alike() -> None:
    rules = CompareRules(array_keys={"$.r": "id"})
    assert kinds({"r": [{"id": 1, "p": 1}]}, {"r": [{"id": "1", "p": 1}]}, rules) == {("$.r[id=1].id", "type")}
    a = {"r": [{"id": i, "p": i} for i in range(30)]}
    b = {"r": [{"id": i, "p": i} for i in reversed(range(30))]}
    (diff,) = compare(reply(a), reply(b), rules).differences
    assert diff.kind is DiffKind.ARRAY_ORDER and diff.primary is not None
    assert diff.primary.startswith('["0","1","2"')


def test_keyed_array_elements_can_be_ignored_by_their_key() -> None:
    rules = CompareRules(array_keys={"$.r": "id"}, ignore=("$.r[id=2]",))
    a = {"r": [{"id": 1, "p": 1}, {"id": 2, "p": 2}, {"id": 3, "p": 3}]}
    b = {"r": [{"id": 1, "p": 9}, {"id": 2, "p": 9}]}
    assert kinds(a, b, rules) == {("$.r[id=1].p", "value"), ("$.r[id=3]", "missing")}


def test_keyed_arrays_stop_at_the_limit_with_the_first_differences() -> None:
    rules = CompareRules(array_keys={"$.results": "id"})
    doc = products()
    other = json.loads(json.dumps(doc))
    for p in other["results"]:
        p["price"] += 1
    found = compare(reply(doc), reply(other), rules, limit=3).differences
    assert [d.path for d in found] == ["$.results[id=0].price", "$.results[id=1].price", "$.results[id=2].price"]


def test_the_garbage_collector_is_left_as_it_was() -> None:
    import gc

    doc = products()
    assert gc.isenabled()
    compare(reply(doc), sorted_reply(doc))
    assert gc.isenabled()
    gc.disable()
    try:
        compare(reply(doc), sorted_reply(doc))
        assert not gc.isenabled()
    finally:
        gc.enable()


large_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from([0.0, 1.0, 2.5]) | st.sampled_from(["", "a"]),
    lambda children: st.lists(children, max_size=24) | st.dictionaries(st.sampled_from("abcdefgh"), children, max_size=8),
    max_leaves=80,
)


@settings(max_examples=200, deadline=None)
@given(large_json_values, large_json_values, st.booleans(), st.booleans())
def test_property_large_values_match_means_equal_json_in_any_key_order(a: Any, b: Any, sort_a: bool, sort_b: bool) -> None:
    ra, rb = reply(json.dumps(a, sort_keys=sort_a).encode()), reply(json.dumps(b, sort_keys=sort_b).encode())
    assert compare(ra, rb).matches == (_canonical(a) == _canonical(b))
    assert compare(ra, reply(json.dumps(a, sort_keys=not sort_a).encode())).matches


@settings(max_examples=200, deadline=None)
@given(large_json_values, large_json_values, st.booleans(), st.integers(1, 5))
def test_property_a_limited_comparison_keeps_the_first_differences(a: Any, b: Any, keyed: bool, limit: int) -> None:
    rules = CompareRules(unordered=("$.a",), array_keys={"$": "a", "$.b": "a"} if keyed else {})
    everything = compare(reply(a), reply(b), rules, limit=10_000).differences
    assert compare(reply(a), reply(b), rules, limit=limit).differences == everything[:limit]
