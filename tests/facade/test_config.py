from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from facade.config import (
    ConfigError,
    FacadeConfig,
    Problem,
    check_file,
    check_text,
    interpolate,
    load_config,
    parse_config,
    parse_path_template,
    template_covers,
)
from facade.exceptions import FacadeError
from facade.units import format_duration, format_size, parse_duration, parse_size

HEAD = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  catalog: {url: "http://127.0.0.1:8002"}
"""
TAIL = "default: {to: monolith}\n"


def problems(body: str, *, head: str = HEAD, tail: str = TAIL, env: dict[str, str] | None = None) -> list[str]:
    config, found = check_text(head + textwrap.dedent(body) + tail, "routing.yaml", env=env or {})
    assert (config is None) == bool(found)
    return [str(problem) for problem in found]


def only(body: str, **kwargs: str) -> str:
    found = problems(body, **kwargs)  # type: ignore[arg-type]
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------------- valid files


FULL = """\
# yaml-language-server: $schema=./routing.schema.json
version: 1
admin:
  token_env: STRANGLER_ADMIN_TOKEN
  token: "${ADMIN_TOKEN:-dev-token}"
assignment:
  cookie: strangler_id
  override_header: X-Strangler-Upstream
breaker: {failures: 3, reset_after: 1500ms}
upstreams:
  monolith: {url: "${MONOLITH_URL:-http://127.0.0.1:8001}", connect_timeout: 1s, timeout: 30s, pool: 100}
  catalog:  {url: "${CATALOG_URL:-http://127.0.0.1:8002}/", timeout: 10, pool: 20, sandbox: true}
routes:
  - id: catalog-read
    match: {path: "/api/products/**", methods: [get, HEAD], headers: {X-Beta: "~yes|on"}, query: {v: 2}}
    to: {monolith: 90, catalog: 10}
    sticky: {cookie: sessionid}
    timeout: 5s
    retries: {attempts: 3, replay_buffer: 64KB}
    fallback: monolith
    shadow:
      to: catalog
      sample: 12.5
      max_body: 2MB
      timeout: 2s
      compare:
        headers: [content-type]
        ignore: ["$.results[*].updated_at"]
        normalize: [{path: "$.next", regex: "https?://[^/]+", replace: ""}]
        tolerance: {"$.price": 0.01}
        unordered: ["$.results"]
        array_keys: {"$.results": id}
      redact: {headers: [X-Api-Key], body_fields: [password]}
      record: {sample: 1, file: .strangler/traffic.jsonl}
  - id: categories
    match: {path: /api/categories}
    to: catalog
    sticky: client
default: {to: monolith, timeout: 30s}
shadow_store: {url: "sqlite:///x.db", retention: 7d, max_rows: 10}
"""


def test_a_full_file_loads_into_typed_values(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(FULL)
    config = load_config(path, env={"CATALOG_URL": "http://10.0.0.2:9000"})
    assert config.admin.token == "dev-token"
    assert config.breaker.reset_after == 1.5
    monolith, catalog = config.upstreams["monolith"], config.upstreams["catalog"]
    assert (monolith.name, monolith.url, monolith.connect_timeout, monolith.timeout) == (
        "monolith", "http://127.0.0.1:8001", 1.0, 30.0,
    )
    assert (catalog.name, catalog.url, catalog.timeout, catalog.pool, catalog.sandbox) == (
        "catalog", "http://10.0.0.2:9000", 10.0, 20, True,
    )
    read, categories = config.routes
    assert read.match.methods == ("GET", "HEAD")
    assert read.match.headers == {"x-beta": "~yes|on"}
    assert read.match.query == {"v": "2"}
    assert read.to == {"monolith": 90, "catalog": 10}
    assert list(read.to) == ["monolith", "catalog"]
    assert read.sticky is not None and read.sticky.cookie == "sessionid"
    assert (read.timeout, read.retries.attempts, read.retries.replay_buffer) == (5.0, 3, 65536)
    shadow = read.shadow
    assert shadow is not None
    assert (shadow.to, shadow.sample, shadow.max_body, shadow.timeout) == ("catalog", 12.5, 2 * 1024 * 1024, 2.0)
    assert shadow.methods == ("GET", "HEAD", "OPTIONS")
    assert (shadow.queue, shadow.inflight, shadow.noise_sample, shadow.allow_writes) == (1000, 50, 10.0, False)
    assert shadow.compare.array_keys == {"$.results": "id"}
    assert shadow.compare.normalize[0].regex == "https?://[^/]+"
    assert shadow.redact.body_fields == ("password",)
    assert shadow.record is not None and shadow.record.file == ".strangler/traffic.jsonl"
    assert categories.to == {"catalog": 100}
    assert categories.sticky is not None and categories.sticky.client
    assert categories.timeout is None
    assert config.default.timeout == 30.0
    assert config.shadow_store.retention == 7 * 86400
    assert config.assignment.cookie_max_age == 365 * 86400


def test_defaults_for_a_minimal_file() -> None:
    config = parse_config(HEAD + TAIL, env={})
    assert config.routes == ()
    assert config.assignment.cookie == "strangler_id"
    assert config.assignment.override_header == "X-Strangler-Upstream"
    assert config.admin.token_env == "STRANGLER_ADMIN_TOKEN"
    assert (config.breaker.failures, config.breaker.reset_after) == (5, 10.0)
    assert config.shadow_store.url == "sqlite:///.strangler/shadow.db"
    assert config.shadow_store.max_rows == 100_000


def test_models_are_frozen() -> None:
    config = parse_config(HEAD + TAIL, env={})
    with pytest.raises(ValidationError):
        config.default.to = "catalog"  # type: ignore[misc]


def test_the_repository_routing_file_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "routing.yaml", env={})
    assert [route.id for route in config.routes] == ["catalog-read", "catalog-write"]
    assert config.routes[0].to == {"monolith": 100, "catalog": 0}
    assert config.default.to == "monolith"
    assert (root / "routing.yaml").read_text().startswith("# yaml-language-server: $schema=./routing.schema.json\n")


# ---------------------------------------------------------------------------------- problems


def test_unknown_upstream_in_weights_is_reported_at_its_key() -> None:
    assert only("""\
        routes:
          - id: catalog-read
            to: {monolith: 40, catalgo: 60}
        """) == (
        "routing.yaml:7:24: route 'catalog-read' sends 60% to 'catalgo', which is not a declared upstream; "
        "declared: monolith, catalog."
    )


def test_unknown_upstreams_in_fallback_shadow_and_default() -> None:
    found = problems(
        """\
        routes:
          - id: r
            to: catalog
            fallback: monolit
            shadow: {to: catalogue}
        """,
        tail="default: {to: legacy, fallback: nowhere}\n",
    )
    assert found == [
        "routing.yaml:8:15: route 'r' falls back to 'monolit', which is not a declared upstream; declared: monolith, catalog.",
        "routing.yaml:9:18: route 'r' mirrors to 'catalogue', which is not a declared upstream; declared: monolith, catalog.",
        "routing.yaml:10:15: the default route sends to 'legacy', which is not a declared upstream; declared: monolith, catalog.",
        "routing.yaml:10:33: the default route falls back to 'nowhere', which is not a declared upstream; declared: monolith, catalog.",
    ]


def test_a_plain_to_naming_an_unknown_upstream() -> None:
    assert only("""\
        routes:
          - id: r
            to: catalgo
        """) == "routing.yaml:7:9: route 'r' sends 100% to 'catalgo', which is not a declared upstream; declared: monolith, catalog."


def test_weights_must_add_up_to_100() -> None:
    assert only("""\
        routes:
          - id: r
            to: {monolith: 60, catalog: 30}
        """) == "routing.yaml:7:9: route 'r' weights add up to 90% (monolith 60 + catalog 30); they must add up to 100."


def test_negative_and_too_fine_weights() -> None:
    assert problems("""\
        routes:
          - id: r
            to: {monolith: 110, catalog: -10}
            match: {path: /r}
          - id: s
            to: {monolith: 99.995, catalog: 0.005}
            match: {path: /s}
        """) == [
        "routing.yaml:7:20: route 'r' gives 'monolith' a weight of 110%; weights are percentages from 0 to 100.",
        "routing.yaml:7:34: route 'r' gives 'catalog' a weight of -10%; weights are percentages from 0 to 100.",
        "routing.yaml:10:20: route 's' gives 'monolith' a weight of 99.995%; weights have a resolution of 0.01%, e.g. 0.25.",
        "routing.yaml:10:37: route 's' gives 'catalog' a weight of 0.005%; weights have a resolution of 0.01%, e.g. 0.25.",
    ]


def test_a_weight_that_is_not_a_number() -> None:
    assert only("""\
        routes:
          - id: r
            to: {monolith: lots, catalog: 0}
        """) == "routing.yaml:7:20: route 'r': to.monolith should be a valid number, unable to parse string as a number; got 'lots'."


def test_duplicate_route_ids() -> None:
    assert only("""\
        routes:
          - id: r
            match: {path: /a}
            to: monolith
          - id: r
            match: {path: /b}
            to: catalog
        """) == "routing.yaml:9:9: route id 'r' is used by routes #1 and #2; route ids must be unique."


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ("{path: /api/**}", "{path: '/api/products/{id}'}"),
        ("{path: /api/**}", "{path: /api}"),
        ("{path: /**}", "{path: /anything/**, methods: [POST]}"),
        ("{path: '/api/{kind}'}", "{path: /api/products}"),
        ("{path: /api/*/x}", "{path: '/api/{id}/x'}"),
        ("{path: /api/**, methods: [GET, HEAD]}", "{path: /api/a, methods: [GET]}"),
        ("{path: /a/**, headers: {X-Beta: '1'}}", "{path: /a/b, headers: {x-beta: '1', x-other: '2'}}"),
        ("{path: /a}", "{path: /a}"),
    ],
)
def test_routes_fully_covered_by_an_earlier_one_are_unreachable(earlier: str, later: str) -> None:
    assert only(f"""\
        routes:
          - id: wide
            match: {earlier}
            to: monolith
          - id: narrow
            match: {later}
            to: catalog
        """) == (
        "routing.yaml:10:5: route 'narrow' can never match: the earlier route 'wide' (#1) matches every request it "
        "would; move route 'narrow' above it or narrow the earlier one."
    )


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ("{path: '/api/products/{id}'}", "{path: /api/**}"),
        ("{path: '/api/products/{id}'}", "{path: /api/products/}"),
        ("{path: /api}", "{path: /api/**}"),
        ("{path: /api/**, methods: [GET]}", "{path: /api/a, methods: [GET, POST]}"),
        ("{path: /api/**, methods: [GET]}", "{path: /api/a}"),
        ("{path: /api/**, headers: {x-beta: '1'}}", "{path: /api/a}"),
        ("{path: /api/**, headers: {x-beta: '~.*'}}", "{path: /api/a, headers: {x-beta: '1'}}"),
        ("{path: /api/**, cookies: {c: '1'}}", "{path: /api/a, cookies: {c: '2'}}"),
        ("{path: /api/**, query: {v: '1'}}", "{path: /api/a, headers: {v: '1'}}"),
        ("{path: '/api/a/{id}'}", "{path: '/api/{kind}/{id}'}"),
    ],
)
def test_routes_only_possibly_shadowed_are_not_reported(earlier: str, later: str) -> None:
    assert problems(f"""\
        routes:
          - id: first
            match: {earlier}
            to: monolith
          - id: second
            match: {later}
            to: catalog
        """) == []


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("api/products", "path template 'api/products' must start with '/', e.g. /api/products/{id}"),
        ("/api/**/x", "path template '/api/**/x': '**' matches the rest of the path, so it must be the last segment"),
        ("/api//x", "path template '/api//x' has an empty segment ('//'); remove the extra slash"),
        ("/files/{name}.json", "path template '/files/{name}.json': '{name}.json' is not a parameter; write a whole segment like {id}"),
        ("/a/{1x}", "path template '/a/{1x}': '{1x}' is not a parameter; write a whole segment like {id}"),
        ("/a/{id}/{id}", "path template '/a/{id}/{id}' names the parameter '{id}' twice; give each a distinct name"),
        ("/a/x*", "path template '/a/x*': segment 'x*' may not contain '{', '}', '*', '?', '#' or spaces; use {name} for one segment or ** for the rest"),
        ("/a?b=1", "path template '/a?b=1': segment 'a?b=1' may not contain '{', '}', '*', '?', '#' or spaces; use {name} for one segment or ** for the rest"),
    ],
)
def test_bad_path_templates(template: str, message: str) -> None:
    assert only(f"""\
        routes:
          - id: r
            match: {{path: "{template}"}}
            to: monolith
        """) == f"routing.yaml:7:19: route 'r': {message}."
    with pytest.raises(ValueError) as raised:
        parse_path_template(template)
    assert str(raised.value) == message


def test_bad_durations_and_sizes() -> None:
    assert problems("""\
        routes:
          - id: r
            to: monolith
            timeout: 5 secs
            retries: {attempts: 2, replay_buffer: 64 kilo}
        """) == [
        "routing.yaml:8:14: route 'r': timeout: '5 secs' is not a duration; write e.g. 250ms, 1s, 2m or a number of seconds.",
        "routing.yaml:9:43: route 'r': retries.replay_buffer: '64 kilo' is not a size; write e.g. 64KB, 1MB or a number of bytes.",
    ]


def test_unknown_keys_are_reported_at_the_key_with_a_suggestion() -> None:
    assert problems("""\
        routes:
          - id: r
            to: monolith
            tiemout: 5s
            match: {paht: /a}
        """) == [
        "routing.yaml:8:5: route 'r': unknown key 'tiemout' (did you mean 'timeout'?); allowed here: id, match, to, "
        "sticky, timeout, retries, fallback, shadow, hold.",
        "routing.yaml:9:13: route 'r': unknown key 'paht' (did you mean 'path'?); allowed here: path, methods, headers, "
        "cookies, query.",
    ]


def test_unknown_top_level_and_upstream_keys() -> None:
    found = problems("shadowstore: {}\n", head=HEAD.replace('8002"}', '8002", pools: 3}'))
    assert found == [
        "routing.yaml:4:43: upstream 'catalog': unknown key 'pools' (did you mean 'pool'?); allowed here: url, "
        "connect_timeout, timeout, pool, sandbox.",
        "routing.yaml:5:1: unknown key 'shadowstore' (did you mean 'shadow_store'?); allowed here: version, admin, "
        "assignment, breaker, limits, upstreams, routes, default, shadow_store, shadow_worker, traffic_record.",
    ]


def test_missing_default_and_missing_route_fields() -> None:
    assert problems(
        """\
        routes:
          - match: {path: /a}
        """,
        tail="",
    ) == [
        "routing.yaml:1:1: the file is missing 'default'; add `default: {to: monolith}`; every request no route matches goes there.",
        "routing.yaml:6:5: route #1 is missing 'id'; give the route a unique id, e.g. id: catalog-read.",
        "routing.yaml:6:5: route #1 is missing 'to'; add the upstream weights, e.g. to: {monolith: 100}.",
    ]


def test_bad_values_of_several_kinds_are_all_reported() -> None:
    found = problems("""\
        routes:
          - id: "bad id"
            to: monolith
            sticky: {cookie: a, header: b}
            retries: {attempts: 0}
            match: {methods: [GET, "N0PE"], headers: {x-a: "~("}}
            shadow: {to: catalog, sample: 150, compare: {ignore: [results.id]}}
        """, head=HEAD.replace('"http://127.0.0.1:8002"', "ftp://x"))
    assert found == [
        "routing.yaml:4:18: upstream 'catalog': url: 'ftp://x' is not an upstream URL; write it like http://127.0.0.1:8001.",
        "routing.yaml:6:9: route 'bad id': id: route id 'bad id' must be letters, digits, '-', '_' or '.', e.g. catalog-read.",
        "routing.yaml:8:13: route 'bad id': sticky needs exactly one key source: {cookie: <name>}, {header: <name>} or client; "
        "got header, cookie.",
        "routing.yaml:9:25: route 'bad id': retries.attempts should be greater than or equal to 1; got 0.",
        "routing.yaml:10:22: route 'bad id': match.methods: 'N0PE' is not an HTTP method; write e.g. GET, POST.",
        "routing.yaml:10:46: route 'bad id': match.headers: header condition 'x-a': '~(' is not a valid regular expression "
        "(missing ), unterminated subpattern at position 0).",
        "routing.yaml:11:35: route 'bad id': shadow.sample should be less than or equal to 100; got 150.",
        "routing.yaml:11:59: route 'bad id': shadow.compare.ignore[0]: 'results.id' is not a JSON path; write it like "
        "$.results[*].updated_at.",
    ]


def test_interpolation_failures_point_at_the_url() -> None:
    head = HEAD.replace('"http://127.0.0.1:8002"', '"${CATALOG_URL}"')
    assert problems("", head=head) == [
        "routing.yaml:4:18: upstream 'catalog' url: ${CATALOG_URL} is not set; set CATALOG_URL or give a default: "
        "${CATALOG_URL:-<value>}"
    ]
    assert problems("", head=head, env={"CATALOG_URL": "http://10.1.1.1:80"}) == []


def test_wrong_shapes_are_explained() -> None:
    assert problems(
        """\
        routes:
          - 5
          - {id: a, to: 5, match: x, sticky: 5}
          - {id: b, to: monolith, match: {path: /b, methods: GET}}
        """,
        tail="default: monolith\n",
    ) == [
        "routing.yaml:6:5: route #1 should be a mapping ({key: value, ...}); got 5.",
        "routing.yaml:7:17: route 'a': to should be a mapping ({key: value, ...}); got 5.",
        "routing.yaml:7:27: route 'a': match should be a mapping ({key: value, ...}); got 'x'.",
        "routing.yaml:7:38: route 'a': sticky should be a mapping ({key: value, ...}); got 5.",
        "routing.yaml:9:10: the default route should be a mapping ({key: value, ...}); got 'monolith'.",
    ]
    config = parse_config(HEAD + "routes:\n  - {id: b, to: monolith, match: {path: /b, methods: get}}\n" + TAIL, env={})
    assert config.routes[0].match.methods == ("GET",)


def test_interpolation_applies_only_to_urls_and_tokens() -> None:
    config = parse_config(HEAD + "routes:\n  - {id: r, to: monolith, match: {headers: {x-a: '${X}'}}}\n" + TAIL, env={"X": "1"})
    assert config.routes[0].match.headers == {"x-a": "${X}"}


def test_interpolate() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("x${A}y", env) == "x1y"
    assert interpolate("${B:-http://h:1}", env) == "http://h:1"
    assert interpolate("${EMPTY:-d}", env) == "d"
    assert interpolate("${A:-d}", env) == "1"
    assert interpolate("no variables", env) == "no variables"
    with pytest.raises(ValueError, match=r"\$\{B\} is not set"):
        interpolate("${B}", env)


def test_yaml_syntax_errors_have_positions() -> None:
    config, found = check_text("version: 1\nupstreams: {monolith: {url: [http://x}\n", "r.yaml")
    assert config is None
    assert [(p.line, p.column) for p in found] == [(2, 38)]
    assert found[0].message.startswith("this is not valid YAML (while parsing a flow sequence")


def test_duplicate_keys_are_syntax_errors() -> None:
    _, found = check_text(HEAD + "default: {to: monolith}\ndefault: {to: catalog}\n", "r.yaml")
    assert [str(p) for p in found] == [
        "r.yaml:6:1: this is not valid YAML (while constructing a mapping found duplicate key \"default\" with value "
        "\"{'to': 'catalog'}\" (original value: \"{'to': 'monolith'}\")); fix the syntax here."
    ]


def test_empty_and_non_mapping_files() -> None:
    assert [str(p) for p in check_text("", "r.yaml")[1]] == [
        "r.yaml:1:1: the file is empty; it needs at least `upstreams:` and `default:`."
    ]
    assert [str(p) for p in check_text("- a\n", "r.yaml")[1]] == [
        "r.yaml:1:1: the file must be a mapping with `upstreams:`, `routes:` and `default:`."
    ]


def test_load_config_raises_config_error_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(
        HEAD + "routes:\n  - {id: r, to: {monolith: 50, catalog: 40}, match: {path: /a}}\n  - {id: r, to: nope}\n" + TAIL
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, env={})
    error = raised.value
    assert isinstance(error, FacadeError)
    assert [(p.line, p.column) for p in error.problems] == [(6, 17), (7, 10), (7, 17)]
    assert str(error).startswith(f"3 problems:\n{path}:6:17: route 'r' weights add up to 90%")
    assert error.as_dict()["problems"][0] == {
        "file": str(path), "line": 6, "column": 17,
        "message": "route 'r' weights add up to 90% (monolith 50 + catalog 40); they must add up to 100.",
    }
    assert check_file(path, env={}) == error.problems


def test_a_missing_file_is_a_problem_too(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert [str(p) for p in check_file(missing)] == [f"{missing}:1:1: cannot read the file: No such file or directory."]
    with pytest.raises(ConfigError):
        load_config(missing)


def test_a_single_problem_error_reads_as_the_problem() -> None:
    error = ConfigError([Problem("r.yaml", 3, 7, "something is wrong.")])
    assert str(error) == "r.yaml:3:7: something is wrong."


def test_models_built_in_python_are_cross_checked() -> None:
    base = {"upstreams": {"monolith": {"url": "http://h:1"}}, "default": {"to": "monolith"}}
    with pytest.raises(ValidationError, match="route 'r' weights add up to 50%"):
        FacadeConfig.model_validate({**base, "routes": [{"id": "r", "to": {"monolith": 50}}]})
    with pytest.raises(ValidationError, match="the default route sends to 'catalog', which is not a declared upstream"):
        FacadeConfig.model_validate({**base, "default": {"to": "catalog"}})
    with pytest.raises(ValidationError, match="leave `name` out"):
        FacadeConfig.model_validate({**base, "upstreams": {"monolith": {"name": "other", "url": "http://h:1"}}})
    assert FacadeConfig.model_validate(base).upstreams["monolith"].name == "monolith"


# ---------------------------------------------------------------------------------- templates, units


@pytest.mark.parametrize(
    ("first", "second", "covers"),
    [
        ("/**", "/", True),
        ("/**", "/a/**", True),
        ("/a/**", "/a", True),
        ("/a/**", "/a/", True),
        ("/a/**", "/ab", False),
        ("/a/{x}", "/a/", False),
        ("/a/{x}", "/a/b", True),
        ("/a/{x}", "/a/*", True),
        ("/a/b", "/a/{x}", False),
        ("/a/{x}", "/a/**", False),
        ("/a/{x}/c", "/a/b/c", True),
        ("/a/{x}/c", "/a/b/d", False),
        ("/a", "/a/", False),
    ],
)
def test_template_coverage(first: str, second: str, covers: bool) -> None:
    assert template_covers(parse_path_template(first), parse_path_template(second)) is covers


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("1s", 1.0), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), ("7d", 604800.0), (3, 3.0),
     (0.5, 0.5), ("10", 10.0), (" 3s ", 3.0)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 secs", "-1s", -1, "1w", "", True, None, "ms", "nan", "inf"])
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64KB", 65536), ("1MB", 1048576), ("1MiB", 1048576), ("2gb", 2 * 1024**3), ("512B", 512), (100, 100),
     ("100", 100), ("1.5KB", 1536)],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["64 kilo", "-1", -1, "1.5", 1.5, "0.1B", True, None, "KB"])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="is not a (whole number of bytes|size)"):
        parse_size(text)


def test_formatting_round_trips() -> None:
    for seconds in (0.25, 1.0, 90.0, 120.0, 3600.0, 86400.0 * 7, 1.5):
        assert parse_duration(format_duration(seconds)) == seconds
    assert format_duration(0.25) == "250ms"
    assert format_duration(120) == "2m"
    for size in (1, 1000, 1024, 65536, 1048576, 3 * 1024**3):
        assert parse_size(format_size(size)) == size
    assert format_size(65536) == "64KB"


def test_the_admin_prefix_is_reserved() -> None:
    assert only("""\
        routes:
          - id: admin
            match: {path: /_strangler/**}
            to: catalog
        """) == (
        "routing.yaml:7:19: route 'admin' matches '/_strangler/**', but /_strangler/ is reserved for the façade's "
        "admin API and never routed; choose another path."
    )
