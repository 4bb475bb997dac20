from __future__ import annotations

import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.config import FacadeConfig, RouteConfig
from facade.routing import BUCKETS, Route, RouteTable, canonical_path, override, path_problem, sticky_key

UPSTREAMS = {"monolith": {"url": "http://127.0.0.1:8001"}, "catalog": {"url": "http://127.0.0.1:8002"}}


def table(*routes: dict[str, Any], upstreams: dict[str, Any] | None = None, **extra: Any) -> RouteTable:
    config = FacadeConfig.model_validate(
        {"upstreams": upstreams or UPSTREAMS, "routes": list(routes), "default": {"to": "monolith"}, **extra}
    )
    return RouteTable.build(config, "v-test")


def route(path: str = "/**", *, id: str = "r", to: Any = "catalog", **match: Any) -> dict[str, Any]:
    return {"id": id, "match": {"path": path, **match}, "to": to}


def matched(t: RouteTable, method: str = "GET", path: str = "/", *, headers: dict[str, str] | None = None,
            cookies: dict[str, str] | None = None, query: dict[str, list[str]] | None = None) -> str:
    return t.match(method, path, headers or {}, cookies or {}, query or {}).id


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/api/products", "/api/products", True),
        ("/api/products", "/api/products/", False),
        ("/api/products", "/api/productsx", False),
        ("/api/products", "/api", False),
        ("/api/products/", "/api/products/", True),
        ("/api/products/", "/api/products", False),
        ("/", "/", True),
        ("/", "/x", False),
        ("/api/products/**", "/api/products", True),
        ("/api/products/**", "/api/products/", True),
        ("/api/products/**", "/api/products/7", True),
        ("/api/products/**", "/api/products/7/reviews/3", True),
        ("/api/products/**", "/api/productsx", False),
        ("/api/products/**", "/api/product", False),
        ("/api/products/**", "/other/api/products/7", False),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/api/products/{id}", "/api/products/7", True),
        ("/api/products/{id}", "/api/products/7/", False),
        ("/api/products/{id}", "/api/products/", False),
        ("/api/products/{id}", "/api/products", False),
        ("/api/products/{id}", "/api/products/7/reviews", False),
        ("/api/{kind}/{id}", "/api/products/7", True),
        ("/api/{kind}/{id}", "/api//7", False),
        ("/api/*/reviews", "/api/7/reviews", True),
        ("/api/*/reviews", "/api/7/ratings", False),
        ("/api/{id}/**", "/api/7", True),
        ("/api/{id}/**", "/api/7/a/b", True),
        ("/api/{id}/**", "/api/", False),
        ("/api/{id}/**", "/apix/7", False),
        ("/api/products/{id}", "/API/products/7", False),
    ],
)
def test_path_templates_match_precisely(template: str, path: str, expected: bool) -> None:
    t = table(route(template))
    assert (matched(t, path=path) == "r") is expected


def test_methods_are_exact_and_absent_means_all() -> None:
    t = table(route("/a", id="reads", methods=["get", "HEAD"]), route("/b", id="any"))
    assert matched(t, "GET", "/a") == "reads"
    assert matched(t, "HEAD", "/a") == "reads"
    assert matched(t, "POST", "/a") == "default"
    assert matched(t, "OPTIONS", "/a") == "default"
    assert {matched(t, method, "/b") for method in ("GET", "POST", "DELETE", "PATCH")} == {"any"}


def test_header_conditions_are_case_insensitive_on_names_and_exact_on_values() -> None:
    t = table(route("/**", headers={"X-Beta": "yes"}))
    assert matched(t, headers={"x-beta": "yes"}) == "r"
    assert matched(t, headers={"x-beta": "Yes"}) == "default"
    assert matched(t, headers={"x-beta": "yes please"}) == "default"
    assert matched(t, headers={}) == "default"


def test_cookie_and_query_conditions() -> None:
    t = table(
        route("/**", id="cookie", cookies={"beta": "1"}),
        route("/**", id="query", query={"v": "2"}),
    )
    assert matched(t, cookies={"beta": "1"}) == "cookie"
    assert matched(t, cookies={"beta": "0"}) == "default"
    assert matched(t, query={"v": ["1", "2"]}) == "query"  # any value of a repeated key
    assert matched(t, query={"v": ["1"]}) == "default"
    assert matched(t, query={"v": []}) == "default"
    assert matched(t, query={"w": ["2"]}) == "default"


def test_numeric_condition_values_are_text() -> None:
    t = table(route("/**", headers={"X-Version": 2}))
    assert matched(t, headers={"x-version": "2"}) == "r"


def test_regex_conditions_match_the_whole_value() -> None:
    t = table(
        route("/**", id="regex", headers={"x-version": "~v[12]"}),
        route("/**", id="present", cookies={"sessionid": "~.+"}),
        route("/**", id="literal", query={"q": "\\~tilde"}),
    )
    assert matched(t, headers={"x-version": "v1"}) == "regex"
    assert matched(t, headers={"x-version": "v2"}) == "regex"
    assert matched(t, headers={"x-version": "v10"}) == "default"
    assert matched(t, headers={"x-version": "xv1"}) == "default"
    assert matched(t, cookies={"sessionid": "abc"}) == "present"
    assert matched(t, cookies={"sessionid": ""}) == "default"
    assert matched(t, query={"q": ["~tilde"]}) == "literal"
    assert matched(t, query={"q": ["tilde"]}) == "default"


def test_all_conditions_must_hold() -> None:
    t = table(route("/api/**", methods=["POST"], headers={"x-a": "1"}, cookies={"c": "2"}, query={"q": "3"}))
    full = {"headers": {"x-a": "1"}, "cookies": {"c": "2"}, "query": {"q": ["3"]}}
    assert matched(t, "POST", "/api/x", **full) == "r"  # type: ignore[arg-type]
    for key in full:
        partial = {**full, key: {}}
        assert matched(t, "POST", "/api/x", **partial) == "default"  # type: ignore[arg-type]
    assert matched(t, "GET", "/api/x", **full) == "default"  # type: ignore[arg-type]


def test_first_declared_match_wins_and_default_is_last() -> None:
    t = table(
        route("/api/products/{id}", id="detail", methods=["GET"]),
        route("/api/products/**", id="products"),
        route("/api/**", id="api", methods=["GET"]),
    )
    assert matched(t, "GET", "/api/products/7") == "detail"
    assert matched(t, "PUT", "/api/products/7") == "products"
    assert matched(t, "GET", "/api/products") == "products"
    assert matched(t, "GET", "/api/orders") == "api"
    assert matched(t, "POST", "/api/orders") == "default"
    assert matched(t, "GET", "/") == "default"
    assert t.match("GET", "/", {}, {}, {}) is t.default
    assert [r.id for r in t.all_routes] == ["detail", "products", "api", "default"]


def test_the_default_route_is_a_route_to_the_default_upstream() -> None:
    config = FacadeConfig.model_validate(
        {"upstreams": UPSTREAMS, "default": {"to": "monolith", "timeout": "12s", "retries": {"attempts": 3}}}
    )
    t = RouteTable.build(config, "v7")
    assert t.version == "v7"
    assert t.default.id == "default"
    assert t.default.choose("anyone") == "monolith"
    assert t.default.config.timeout == 12
    assert t.default.config.retries.attempts == 3
    assert t.by_id["default"] is t.default
    assert matched(t, "DELETE", "/whatever/at/all") == "default"
    assert set(t.upstreams) == {"monolith", "catalog"}


def test_the_table_is_immutable() -> None:
    t = table(route("/a"))
    with pytest.raises(AttributeError):
        t.version = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        t.upstreams["x"] = t.upstreams["monolith"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("template", "path", "endpoint"),
    [
        ("/api/products/{id}", "/api/products/7", "GET /api/products/{id}"),
        ("/api/products/**", "/api/products/7", "GET /api/products/{id}"),
        ("/api/products/**", "/api/products", "GET /api/products"),
        ("/api/products/**", "/api/products/", "GET /api/products/"),
        ("/api/products/**", "/api/products/7/reviews/12", "GET /api/products/{id}/reviews/{id}"),
        ("/api/products/**", "/api/products/3f2b8c1e-0b6a-4d5e-9f1a-2b3c4d5e6f70", "GET /api/products/{uuid}"),
        ("/api/products/**", "/api/products/deadbeefdeadbeef00", "GET /api/products/{hex}"),
        ("/api/products/**", "/api/products/blue-shirt", "GET /api/products/blue-shirt"),
        ("/api/*/x", "/api/7/x", "GET /api/{*}/x"),
        ("/**", "/", "GET /"),
    ],
)
def test_endpoints_are_canonical(template: str, path: str, endpoint: str) -> None:
    t = table(route(template))
    r = t.match("GET", path, {}, {}, {})
    assert r.id == "r"
    assert r.endpoint("get", path) == endpoint


def test_canonical_path_of_the_default_route_replaces_identifiers() -> None:
    assert canonical_path(("**",), "/orders/41/items/2") == "/orders/{id}/items/{id}"


# ---------------------------------------------------------------------------------- assignment


def split(weights: dict[str, float], route_id: str = "catalog-read") -> Route:
    return table(route("/**", id=route_id, to=weights)).routes[0]


def test_buckets_are_stable_across_processes() -> None:
    r = split({"monolith": 50, "catalog": 50})
    here = [r.bucket(f"user-{n}") for n in range(20)]
    code = (
        "from facade.config import FacadeConfig; from facade.routing import RouteTable;"
        "c = FacadeConfig.model_validate({'upstreams': {'monolith': {'url': 'http://a:1'}, 'catalog': {'url': 'http://b:1'}},"
        "'routes': [{'id': 'catalog-read', 'to': {'monolith': 50, 'catalog': 50}}], 'default': {'to': 'monolith'}});"
        "r = RouteTable.build(c, 'x').routes[0]; print([r.bucket(f'user-{n}') for n in range(20)])"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout
    assert other.strip() == str(here)
    assert all(0 <= bucket < BUCKETS for bucket in here)


def test_buckets_depend_on_the_route() -> None:
    first, second = split({"monolith": 50, "catalog": 50}, "a"), split({"monolith": 50, "catalog": 50}, "b")
    assert [first.bucket(f"u{n}") for n in range(50)] != [second.bucket(f"u{n}") for n in range(50)]


def test_upstreams_own_cumulative_ranges_in_declared_order() -> None:
    r = split({"monolith": 25, "catalog": 75})
    assert r.bounds == (2500, 10000)
    assert r.upstream_for_bucket(0) == "monolith"
    assert r.upstream_for_bucket(2499) == "monolith"
    assert r.upstream_for_bucket(2500) == "catalog"
    assert r.upstream_for_bucket(9999) == "catalog"


def test_weight_zero_sends_nobody_and_100_everybody() -> None:
    for weights, only in (({"monolith": 100, "catalog": 0}, "monolith"), ({"monolith": 0, "catalog": 100}, "catalog")):
        r = split(weights)
        assert {r.choose(f"user-{n}") for n in range(2000)} == {only}
        assert {r.upstream_for_bucket(b) for b in range(BUCKETS)} == {only}


def test_an_anonymous_request_without_any_key_still_gets_a_declared_upstream() -> None:
    r = split({"monolith": 50, "catalog": 50})
    assert {r.choose(None) for _ in range(200)} == {"monolith", "catalog"}


def test_fractional_weights_have_a_resolution_of_a_hundredth_percent() -> None:
    r = split({"monolith": 99.75, "catalog": 0.25})
    assert sum(1 for b in range(BUCKETS) if r.upstream_for_bucket(b) == "catalog") == 25


weights_pct = st.integers(min_value=0, max_value=10000).map(lambda basis: basis / 100)


@settings(max_examples=300, deadline=None)
@given(key=st.text(min_size=0, max_size=40), low=weights_pct, high=weights_pct)
def test_raising_the_new_weight_never_moves_a_user_back(key: str, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)
    before = split({"monolith": round(100 - low, 2), "catalog": low})
    after = split({"monolith": round(100 - high, 2), "catalog": high})
    if before.choose(key) == "catalog":
        assert after.choose(key) == "catalog"
    if after.choose(key) == "monolith":
        assert before.choose(key) == "monolith"


@settings(max_examples=200, deadline=None)
@given(key=st.text(max_size=30), first=weights_pct, second=weights_pct, third=weights_pct)
def test_with_three_upstreams_moving_weight_later_in_the_list_never_moves_a_user_earlier(
    key: str, first: float, second: float, third: float
) -> None:
    upstreams = {**UPSTREAMS, "next": {"url": "http://127.0.0.1:8003"}}
    # Two cumulative boundaries, each only shrinking from `before` to `after`.
    c1_after, c1_before = sorted((first, second))
    c2_before = max(c1_before, third)
    c2_after = max(c1_after, min(third, c2_before))

    def build(c1: float, c2: float) -> Route:
        weights = {"monolith": c1, "catalog": round(c2 - c1, 2), "next": round(100 - c2, 2)}
        return table(route("/**", id="r", to=weights), upstreams=upstreams).routes[0]

    order = ["monolith", "catalog", "next"]
    before, after = build(c1_before, c2_before), build(c1_after, c2_after)
    assert order.index(after.choose(key)) >= order.index(before.choose(key))


@settings(max_examples=20, deadline=None)
@given(weight=st.integers(min_value=0, max_value=100))
def test_the_share_of_users_follows_the_weight(weight: int) -> None:
    r = split({"monolith": 100 - weight, "catalog": weight})
    counts = Counter(r.choose(f"client-{n}") for n in range(4000))
    share = counts["catalog"] / 4000 * 100
    # 4000 keys: the binomial standard deviation is at most 0.8 points; allow 4 of them.
    assert abs(share - weight) <= 3.2
    if weight == 0:
        assert counts["catalog"] == 0


# ---------------------------------------------------------------------------------- sticky keys


def test_sticky_key_from_header_cookie_or_client() -> None:
    t = table(
        {**route("/h", id="h"), "sticky": {"header": "X-User-Id"}},
        {**route("/c", id="c"), "sticky": {"cookie": "sessionid"}},
        {**route("/a", id="a"), "sticky": "client"},
        route("/n", id="n"),
    )
    headers, cookies = {"x-user-id": "42"}, {"sessionid": "s1"}
    assert sticky_key(t.by_id["h"], headers, cookies, "10.0.0.1") == "42"
    assert sticky_key(t.by_id["c"], headers, cookies, "10.0.0.1") == "s1"
    assert sticky_key(t.by_id["a"], headers, cookies, "10.0.0.1") == "10.0.0.1"
    assert sticky_key(t.by_id["n"], headers, cookies, "10.0.0.1") is None
    assert sticky_key(t.by_id["h"], {}, cookies, "10.0.0.1") is None
    assert sticky_key(t.by_id["c"], headers, {"sessionid": ""}, "10.0.0.1") is None
    assert sticky_key(t.by_id["a"], headers, cookies, None) is None
    assert sticky_key(t.default, headers, cookies, "10.0.0.1") is None


def test_override_header_forces_only_the_routes_own_upstreams_and_shadow_target() -> None:
    upstreams = {**UPSTREAMS, "sandbox": {"url": "http://127.0.0.1:8003"}, "next": {"url": "http://127.0.0.1:8004"}}
    t = table(
        route("/a", id="a", to={"monolith": 100, "catalog": 0}),
        {**route("/s", id="s", to="monolith"), "shadow": {"to": "next"}},
        route("/b", id="b", to="sandbox"),
        upstreams=upstreams,
    )
    a, s = t.by_id["a"], t.by_id["s"]
    assert override(t, a, {"x-strangler-upstream": "catalog"}) == "catalog"  # weight 0 is still the route's
    assert override(t, a, {"x-strangler-upstream": " monolith "}) == "monolith"
    assert override(t, a, {"x-strangler-upstream": "sandbox"}) is None  # declared, but another route's
    assert override(t, a, {"x-strangler-upstream": "next"}) is None
    assert override(t, s, {"x-strangler-upstream": "next"}) == "next"  # the route's shadow target
    assert override(t, s, {"x-strangler-upstream": "catalog"}) is None
    assert override(t, t.default, {"x-strangler-upstream": "catalog"}) is None
    assert override(t, t.default, {"x-strangler-upstream": "monolith"}) == "monolith"
    assert override(t, a, {"x-strangler-upstream": "http://evil.example"}) is None
    assert override(t, a, {"x-strangler-upstream": ""}) is None
    assert override(t, a, {}) is None
    custom = table(route("/a", id="a", to={"monolith": 50, "catalog": 50}), assignment={"override_header": "X-Force"})
    assert override(custom, custom.by_id["a"], {"x-force": "catalog"}) == "catalog"
    assert override(custom, custom.by_id["a"], {"x-strangler-upstream": "catalog"}) is None
    off = table(route("/a", id="a", to={"monolith": 50, "catalog": 50}), assignment={"override_header": None})
    assert override(off, off.by_id["a"], {"x-strangler-upstream": "catalog"}) is None


def test_as_dict_describes_the_table() -> None:
    t = table({**route("/api/**", id="api", to={"monolith": 90, "catalog": 10}), "sticky": {"cookie": "sessionid"}})
    described = t.as_dict()
    assert described["version"] == "v-test"
    assert described["routes"][0]["to"] == {"monolith": 90, "catalog": 10}
    assert described["routes"][0]["sticky"] == {"cookie": "sessionid"}
    assert described["default"]["to"] == {"monolith": 100}


TEMPLATES = [
    "/", "/api", "/api/", "/api/**", "/api/products", "/api/products/", "/api/products/**", "/api/products/{id}",
    "/api/{kind}/{id}", "/api/*/reviews", "/{x}", "/{x}/**", "/**", "/static/**", "/api/orders/{id}/items",
]
segment = st.sampled_from(["api", "products", "orders", "7", "", "reviews", "items", "static", "x"])


@settings(max_examples=150, deadline=None)
@given(
    picks=st.lists(st.tuples(st.sampled_from(TEMPLATES), st.sampled_from([None, ("GET",), ("POST",)])), max_size=8),
    segments=st.lists(segment, max_size=5),
    method=st.sampled_from(["GET", "POST"]),
)
def test_the_index_finds_the_same_route_as_a_linear_scan(
    picks: list[tuple[str, tuple[str, ...] | None]], segments: list[str], method: str
) -> None:
    routes = [
        {"id": f"r{n}", "match": {"path": template, **({"methods": list(methods)} if methods else {})}, "to": "catalog"}
        for n, (template, methods) in enumerate(picks)
    ]
    # model_copy skips the cross checks: shadowed routes are fine here, the index must still agree.
    config = FacadeConfig.model_validate({"upstreams": UPSTREAMS, "default": {"to": "monolith"}}).model_copy(
        update={"routes": tuple(RouteConfig.model_validate(route) for route in routes)}
    )
    t = RouteTable.build(config, "v")
    path = "/" + "/".join(segments)
    expected = next((r for r in t.routes if r.matches(method, path, {}, {}, {})), t.default)
    assert t.match(method, path, {}, {}, {}) is expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"/api/products/7", None),
        (b"/", None),
        (b"/a%20b/%C3%A9/%25/%3F", None),
        (b"/.well-known/x/..x/x..", None),
        (b"/a//b", None),
        (b"/a/./b", "the path '/a/./b' has a dot segment ('.' or '..'), which the façade does not resolve; send it as '/a/b'"),
        (b"/a/b/..", "the path '/a/b/..' has a dot segment ('.' or '..'), which the façade does not resolve; send it as '/a/'"),
        (b"/../../x", "the path '/../../x' has a dot segment ('.' or '..'), which the façade does not resolve; send it as '/x'"),
        (b"/%5F%73trangler/x", "the path '/%5F%73trangler/x' percent-encodes '_' (%5F), which needs no encoding; send it as '/_strangler/x'"),
        (b"/a%7eb", "the path '/a%7eb' percent-encodes '~' (%7e), which needs no encoding; send it as '/a~b'"),
        (b"/a%2fb", "the path '/a%2fb' has an encoded '/' (%2f), which the façade does not route on; send the path without it"),
        (b"/a%5Cb", "the path '/a%5Cb' has an encoded '\\\\' (%5C), which the façade does not route on; send the path without it"),
    ],
)
def test_path_problem_refuses_dot_segments_needless_escapes_and_encoded_separators(raw: bytes, problem: str | None) -> None:
    from urllib.parse import unquote

    assert path_problem(raw, unquote(raw.decode("latin-1"))) == problem
