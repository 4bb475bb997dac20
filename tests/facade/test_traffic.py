"""The traffic recorder's setting and records, and the dry-run's matching on digests."""

from __future__ import annotations

import textwrap

from facade.config import check_text, parse_config
from facade.dryrun import dry_run, predict
from facade.proxy import _Cookies
from facade.routing import RouteTable
from facade.traffic import _Plan, record_line

KEY = "a-secret-key-of-32-characters-00"
ENV = {"STRANGLER_ASSIGNMENT_KEY": KEY}

BASE = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  catalog: {url: "http://127.0.0.1:8002"}
routes:
  - id: beta
    match: {path: "/api/**", headers: {X-Version: "~v[12]"}, cookies: {plan: gold}}
    to: catalog
  - id: split
    match: {path: "/api/**"}
    to: {monolith: 50, catalog: 50}
default: {to: monolith}
"""


def _table(extra: str, routes_text: str = BASE) -> RouteTable:
    return RouteTable.build(parse_config(routes_text + textwrap.dedent(extra), env=ENV), "t")


def test_traffic_record_needs_the_assignment_key() -> None:
    _, problems = check_text(BASE + "traffic_record: {file: t.jsonl, routes: {nope: 5}}\n", env=ENV)
    messages = [str(problem) for problem in problems]
    assert any(m.startswith("routing.yaml:13:1: traffic_record needs assignment.key") for m in messages), messages
    assert any("samples route 'nope', which is not declared" in m for m in messages), messages


def test_a_short_key_is_refused_without_quoting_it() -> None:
    _, problems = check_text(BASE + "assignment: {key: tiny-secret}\n")
    assert len(problems) == 1
    assert "at least 16" in str(problems[0]) and "tiny-secret" not in str(problems[0])


def _record(table: RouteTable, headers: list[tuple[bytes, bytes]], path: bytes = b"/api/x") -> dict[str, object]:
    plan = _Plan.build(table)
    assert plan is not None
    text = {k.decode(): v.decode() for k, v in headers}
    route = table.match("GET", path.decode(), text, _Cookies(text.get("cookie")), {})
    return record_line((plan, route, table, "", "GET", path, b"", headers, "10.1.2.3", None, 0.0, 50.0))


def test_records_hold_digests_and_regex_results_that_replay_exactly() -> None:
    table = _table('assignment: {key: "${STRANGLER_ASSIGNMENT_KEY}"}\ntraffic_record: {file: t.jsonl, sample: 50}\n')
    gold = _record(table, [(b"x-version", b"v2"), (b"cookie", b"plan=gold; strangler_id=0123456789abcdef")])
    assert gold["route"] == "beta" and gold["w"] == 2.0
    assert gold["re"] == {"header x-version ~v[12]": True}
    text = repr(gold)
    assert "gold" not in text and "v2" not in text and "10.1.2.3" not in text and "0123456789abcdef" not in text
    assert predict(table, gold).route == "beta"
    silver = _record(table, [(b"x-version", b"v3"), (b"cookie", b"plan=gold; strangler_id=0123456789abcdef")])
    assert silver["re"] == {"header x-version ~v[12]": False}
    prediction = predict(table, silver)
    assert prediction.route == "split"
    # The bucket from the recorded digest is the one the façade computes from the raw cookie.
    assert prediction.upstream == table.by_id["split"].choose("0123456789abcdef")


def test_dry_run_names_reroutes_unrecorded_keys_and_idle_routes() -> None:
    extra = 'assignment: {key: "${STRANGLER_ASSIGNMENT_KEY}"}\ntraffic_record: {file: t.jsonl, sample: 50}\n'
    before = _table(extra)
    gold = _record(before, [(b"x-version", b"v1"), (b"cookie", b"plan=gold; strangler_id=0123456789abcdef")])
    plain = _record(before, [(b"cookie", b"strangler_id=fedcba9876543210")])
    without_beta = BASE.replace('    match: {path: "/api/**", headers: {X-Version: "~v[12]"}, cookies: {plan: gold}}\n    to: catalog\n', '')
    without_beta = without_beta.replace("  - id: beta\n", "")
    report = dry_run(before, _table(extra, without_beta), [gold, plain])
    assert report.rerouted == {("beta", "split"): 2.0}
    assert report.never_hit == ["default"]
    assert report.unpredictable == {}
    sticky_on_tenant = BASE.replace(
        "  - id: split\n", '  - id: tenant\n    match: {path: "/api/**", methods: [GET]}\n    to: {monolith: 50, catalog: 50}\n'
        "    sticky: {header: X-Tenant}\n  - id: split\n"
    )
    report = dry_run(before, _table(extra, sticky_on_tenant), [gold, plain])
    assert report.unpredictable == {"route 'tenant' is sticky on header 'X-Tenant', which was not recorded": 1}
    assert report.shares_after == {("beta", "catalog"): 2.0}
