from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from typer.testing import CliRunner

from facade.config import ConfigError, load_config
from facade.exceptions import FacadeError
from scripts.routes_cmd import app, check_routes, diff_files, schema_text, shift_weights

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

BLOCK = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}   # the legacy app
  catalog: {url: "http://127.0.0.1:8002"}
  search: {url: "http://127.0.0.1:8003"}

routes:
  # reads first
  - id: reads
    match:
      path: /api/products/**
      methods: [GET]
    to:
      monolith: 90     # old
      catalog: 10      # new
  - id: plain
    match: {path: /api/categories}
    to: monolith   # everything to the monolith for now
  - id: three
    match: {path: /api/search}
    to: {monolith: 50, catalog: 30, search: 20}
default: {to: monolith}
"""


@pytest.fixture
def routing(tmp_path: Path) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_bytes((ROOT / "routing.yaml").read_bytes())
    return path


@pytest.fixture
def block(tmp_path: Path) -> Path:
    path = tmp_path / "block.yaml"
    path.write_text(BLOCK)
    return path


# ---------------------------------------------------------------------------------- schema


def test_the_committed_schema_is_generated_from_the_model() -> None:
    assert (ROOT / "routing.schema.json").read_text() == schema_text(), "run `strangler routes schema` and commit it"


def test_the_schema_accepts_the_repository_file_and_rejects_typos() -> None:
    schema = json.loads(schema_text())
    validator = jsonschema.Draft202012Validator(schema)
    document = YAML(typ="safe").load((ROOT / "routing.yaml").read_text())
    assert list(validator.iter_errors(document)) == []
    block = YAML(typ="safe").load(BLOCK)
    block["routes"][0]["sticky"] = "client"
    block["routes"][1]["sticky"] = {"cookie": "sessionid"}
    block["routes"][0]["retries"] = {"attempts": 2, "replay_buffer": "64KB"}
    block["routes"][0]["timeout"] = "250ms"
    assert list(validator.iter_errors(block)) == []
    block["routes"][0]["tiemout"] = "5s"
    block["routes"][1]["timeout"] = "5 secs"
    assert len(list(validator.iter_errors(block))) == 2


def test_schema_command_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    result = runner.invoke(app, ["schema", "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == schema_text()
    stdout = runner.invoke(app, ["schema", "-o", "-"])
    assert json.loads(stdout.output)["title"] == "strangler routing.yaml"


# ---------------------------------------------------------------------------------- check


def test_check_a_valid_file(routing: Path) -> None:
    result = runner.invoke(app, ["check", str(routing)])
    assert result.exit_code == 0
    assert result.output == (
        f"{routing}: OK, 2 upstreams (monolith, catalog), 2 routes and the default to monolith; "
        "catalog-read monolith 100%, catalog 0%; catalog-write monolith 100%, catalog 0%\n"
    )


def test_check_an_invalid_file_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BLOCK.replace("catalog: 10 ", "catalgo: 10 ").replace("search: 20", "search: 25"))
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{path}:15:7: route 'reads' sends 10% to 'catalgo', which is not a declared upstream; declared: monolith, catalog, search.",
        f"{path}:21:9: route 'three' weights add up to 105% (monolith 50 + catalog 30 + search 25); they must add up to 100.",
    ]
    as_json = json.loads(runner.invoke(app, ["check", str(path), "--json"]).stdout)
    assert as_json["ok"] is False
    assert [(p["line"], p["column"]) for p in as_json["problems"]] == [(15, 7), (21, 9)]
    assert check_routes(path).summary() == f"{path}: 2 problems"


def test_check_json_of_a_valid_file(routing: Path) -> None:
    result = runner.invoke(app, ["check", str(routing), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "file": str(routing),
        "ok": True,
        "summary": check_routes(routing).summary(),
        "problems": [],
    }


# ---------------------------------------------------------------------------------- shift


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(old) == len(new)
    return [(a, b) for a, b in zip(old, new) if a != b]


def test_shift_rewrites_only_the_numbers_and_keeps_comment_columns(routing: Path) -> None:
    original = routing.read_text()
    result = shift_weights(routing, "catalog-read", {"catalog": 25})
    assert (result.old, result.new, result.written) == ({"monolith": 100, "catalog": 0}, {"monolith": 75, "catalog": 25}, True)
    assert result.describe() == "catalog-read: monolith 100% → 75%, catalog 0% → 25%"
    after = routing.read_text()
    [(old_line, new_line)] = changed_lines(original, after)
    assert old_line.startswith("    to: {monolith: 100, catalog: 0}         # percent")
    assert new_line == old_line.replace("{monolith: 100, catalog: 0}         #", "{monolith: 75, catalog: 25}         #")
    assert new_line.index("#") == old_line.index("#")
    assert load_config(routing, env={}).routes[0].to == {"monolith": 75, "catalog": 25}
    # Back to zero gives the original bytes back.
    shift_weights(routing, "catalog-read", {"catalog": 0})
    assert routing.read_bytes() == original.encode()


@settings(max_examples=8, deadline=None)
@given(weight=st.integers(min_value=0, max_value=100))
def test_any_shift_and_back_is_byte_identical(tmp_path_factory: pytest.TempPathFactory, weight: int) -> None:
    path = tmp_path_factory.mktemp("shift") / "routing.yaml"
    original = (ROOT / "routing.yaml").read_bytes()
    path.write_bytes(original)
    shift_weights(path, "catalog-read", {"catalog": weight, "monolith": 100 - weight})
    changed = changed_lines(original.decode(), path.read_text())
    assert [f"to: {{monolith: {100 - weight}, catalog: {weight}}}" in line for _, line in changed] == ([True] if weight else [])
    shift_weights(path, "catalog-read", {"monolith": 100})
    assert path.read_bytes() == original


def test_shift_in_block_style_keeps_comments(block: Path) -> None:
    result = shift_weights(block, "reads", {"catalog": 50})
    assert result.new == {"monolith": 50, "catalog": 50}
    assert changed_lines(BLOCK, block.read_text()) == [
        ("      monolith: 90     # old\n", "      monolith: 50     # old\n"),
        ("      catalog: 10      # new\n", "      catalog: 50      # new\n"),
    ]


def test_shift_with_fractions(block: Path) -> None:
    shift_weights(block, "reads", {"catalog": 0.5})
    assert changed_lines(BLOCK, block.read_text()) == [
        ("      monolith: 90     # old\n", "      monolith: 99.5   # old\n"),
        ("      catalog: 10      # new\n", "      catalog: 0.5     # new\n"),
    ]


def test_shift_a_plain_target_into_weights(block: Path) -> None:
    result = shift_weights(block, "plain", {"catalog": 10})
    assert result.new == {"monolith": 90, "catalog": 10}
    assert changed_lines(BLOCK, block.read_text()) == [
        (
            "    to: monolith   # everything to the monolith for now\n",
            "    to: {monolith: 90, catalog: 10}  # everything to the monolith for now\n",
        )
    ]


def test_shift_adds_an_upstream_new_to_the_route(block: Path) -> None:
    shift_weights(block, "reads", {"search": 5, "catalog": 10, "monolith": 85})
    text = block.read_text()
    assert "      monolith: 85     # old\n      catalog: 10      # new\n      search: 5\n  - id: plain\n" in text
    assert load_config(block, env={}).routes[0].to == {"monolith": 85, "catalog": 10, "search": 5}
    shift_weights(block, "three", {"monolith": 50, "catalog": 30, "search": 20})
    assert block.read_text() == text


def test_shift_adds_to_a_flow_mapping(routing: Path) -> None:
    text = routing.read_text().replace(
        'catalog:  {url: "${CATALOG_URL:-http://127.0.0.1:8002}", connect_timeout: 1s, timeout: 10s, pool: 100}',
        'catalog:  {url: "${CATALOG_URL:-http://127.0.0.1:8002}", connect_timeout: 1s, timeout: 10s, pool: 100}\n'
        '  search: {url: "http://127.0.0.1:8003"}',
    )
    routing.write_text(text)
    shift_weights(routing, "catalog-read", {"search": 10, "catalog": 20, "monolith": 70})
    assert "    to: {monolith: 70, catalog: 20, search: 10}  # percent" in routing.read_text()


def test_shift_three_upstreams_needs_all_but_one(block: Path) -> None:
    with pytest.raises(FacadeError) as raised:
        shift_weights(block, "three", {"search": 30})
    assert str(raised.value) == (
        "route 'three' also sends to monolith, catalog; give their weights too (--to monolith=..., so that "
        "everything adds up to 100)"
    )
    result = shift_weights(block, "three", {"search": 30, "catalog": 30})
    assert result.new == {"monolith": 40, "catalog": 30, "search": 30}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"catalog": 120}, "--to catalog=120: weights are percentages from 0 to 100"),
        ({"catalog": -1}, "--to catalog=-1: weights are percentages from 0 to 100"),
        ({"catalog": 60, "monolith": 60}, "the weights given for route 'reads' add up to 120%, not 100; give them all so "
         "they add up to 100 (e.g. --to catalog=...)"),
        ({"catalog": 60, "search": 50}, "the weights given for route 'reads' add up to 110%, which leaves nothing for "
         "monolith; they must add up to at most 100"),
    ],
)
def test_shift_refuses_bad_weights(block: Path, weights: dict[str, float], message: str) -> None:
    with pytest.raises(FacadeError) as raised:
        shift_weights(block, "reads", weights)
    assert str(raised.value) == message
    assert block.read_text() == BLOCK


def test_shift_of_an_unknown_route(block: Path) -> None:
    with pytest.raises(FacadeError, match=r"route 'nope' is not in .*block.yaml; routes: reads, plain, three"):
        shift_weights(block, "nope", {"catalog": 1})


def test_shift_names_an_upstream_that_is_neither_on_the_route_nor_declared(block: Path) -> None:
    with pytest.raises(FacadeError) as raised:
        shift_weights(block, "reads", {"catalgo": 20, "catalog": 0})
    assert str(raised.value) == (
        f"'catalgo' is not an upstream of route 'reads' in {block} (it sends to monolith, catalog; "
        "declared upstreams: monolith, catalog, search); did you mean 'catalog'? use --to NAME=PERCENT with one of those"
    )
    assert block.read_text() == BLOCK


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"upstreams: {a: {url: 'http://127.0.0.1:1'}\n", ":2:1: this is not valid YAML"),
        (b"upstreams:\n  a: {url: 'http://127.0.0.1:1'}\n  a: {url: 'http://127.0.0.1:2'}\ndefault: {to: a}\n", ":3:3: this is not valid YAML (while constructing a mapping found duplicate key"),
        (b"upstreams: \xff\n", ":1:1: the file is not UTF-8 text"),
    ],
)
def test_shift_reports_a_broken_file_as_check_does(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "routing.yaml"
    path.write_bytes(content)
    done = subprocess.run(
        [sys.executable, "-m", "scripts", "routes", "shift", str(path), "reads", "--to", "catalog=10"],
        capture_output=True, text=True, cwd=ROOT,
    )
    checked = subprocess.run(
        [sys.executable, "-m", "scripts", "routes", "check", str(path)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"FAILED: {path}{problem}")
    assert checked.stdout.splitlines()[0] in done.stderr
    assert path.read_bytes() == content


def test_shift_validates_the_whole_new_file_before_writing(block: Path) -> None:
    broken = BLOCK.replace("default: {to: monolith}", "default: {to: legacy}")
    block.write_text(broken)
    with pytest.raises(ConfigError, match="the default route sends to 'legacy'"):
        shift_weights(block, "reads", {"catalog": 20})
    assert block.read_text() == broken


def test_shift_dry_run_writes_nothing_and_shows_the_diff(block: Path) -> None:
    result = shift_weights(block, "reads", {"catalog": 30}, dry_run=True)
    assert not result.written and result.changed
    assert block.read_text() == BLOCK
    assert (
        "-      monolith: 90     # old\n-      catalog: 10      # new\n"
        "+      monolith: 70     # old\n+      catalog: 30      # new\n"
    ) in result.diff


def test_shift_replaces_the_file_atomically_keeping_its_mode(block: Path) -> None:
    os.chmod(block, 0o640)
    inode = block.stat().st_ino
    shift_weights(block, "reads", {"catalog": 30})
    assert block.stat().st_ino != inode
    assert block.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in block.parent.iterdir()) == ["block.yaml"]


def test_an_unchanged_shift_does_not_touch_the_file(block: Path) -> None:
    inode = block.stat().st_ino
    result = shift_weights(block, "reads", {"catalog": 10})
    assert not result.changed and not result.written
    assert block.stat().st_ino == inode
    assert result.describe() == "reads: unchanged (monolith 90%, catalog 10%)"


def test_shift_command(block: Path) -> None:
    result = runner.invoke(app, ["shift", str(block), "reads", "--to", "catalog=40", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.endswith("reads: monolith 90% → 60%, catalog 10% → 40% (dry run, nothing written)\n")
    assert block.read_text() == BLOCK
    result = runner.invoke(app, ["shift", str(block), "reads", "--to", "catalog=40", "--to", "monolith=60", "--json"])
    assert json.loads(result.stdout)["new"] == {"monolith": 60, "catalog": 40}
    assert load_config(block, env={}).routes[0].to == {"monolith": 60, "catalog": 40}
    bad = runner.invoke(app, ["shift", str(block), "reads", "--to", "catalog"])
    assert bad.exit_code == 2
    assert "'catalog' is not NAME=PERCENT" in bad.output


def test_the_strangler_command_prints_failed_for_known_errors(block: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts", "routes", "shift", str(block), "reads", "--to", "catalog=120"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "FAILED: --to catalog=120: weights are percentages from 0 to 100"


# ---------------------------------------------------------------------------------- diff


def test_diff_route_by_route(tmp_path: Path, block: Path) -> None:
    new = tmp_path / "new.yaml"
    new.write_text(
        BLOCK.replace("monolith: 90     # old", "monolith: 50     # old")
        .replace("catalog: 10      # new", "catalog: 50      # new")
        .replace("      methods: [GET]\n", "      methods: [GET, HEAD]\n    timeout: 2s\n")
        .replace(
            "  - id: plain\n    match: {path: /api/categories}\n    to: monolith   # everything to the monolith for now\n",
            "",
        )
        .replace(
            "  - id: three\n    match: {path: /api/search}\n    to: {monolith: 50, catalog: 30, search: 20}\n",
            "  - id: orders\n    match: {path: /api/orders/**}\n    to: monolith\n"
            "    shadow: {to: catalog, sample: 5}\n"
            "  - id: three\n    match: {path: /api/search}\n    to: {monolith: 50, catalog: 30, search: 20}\n"
            "    shadow: {to: search, sample: 10}\n",
        )
        .replace('"http://127.0.0.1:8003"', '"http://127.0.0.1:9003", timeout: 5s')
        .replace("default: {to: monolith}", "default: {to: monolith, timeout: 20s}\nbreaker: {failures: 3}")
    )
    changes = [change.as_dict() for change in diff_files(block, new, env={})]
    assert changes == [
        {"scope": "route", "name": "reads", "kind": "changed", "details": [
            "monolith 90% → 50%", "catalog 10% → 50%", "match.methods [GET] → [GET, HEAD]", "timeout (upstream's) → 2s"]},
        {"scope": "route", "name": "orders", "kind": "added", "details": ["at #2: /api/orders/** → monolith 100%"]},
        {"scope": "route", "name": "three", "kind": "changed", "details": ["shadow added: to search, sample 10%"]},
        {"scope": "route", "name": "plain", "kind": "removed", "details": ["was #2: /api/categories"]},
        {"scope": "default", "name": "default", "kind": "changed", "details": ["timeout (upstream's) → 20s"]},
        {"scope": "upstream", "name": "search", "kind": "changed", "details": [
            "url http://127.0.0.1:8003 → http://127.0.0.1:9003", "timeout 30s → 5s"]},
        {"scope": "settings", "name": "breaker", "kind": "changed", "details": ["breaker.failures 5 → 3"]},
    ]


def test_diff_reports_moves(tmp_path: Path, block: Path) -> None:
    moved = tmp_path / "moved.yaml"
    document = BLOCK.split("  - id: plain\n")
    plain, three = document[1].split("  - id: three\n")
    moved.write_text(document[0] + "  - id: three\n" + three.replace("default: {to: monolith}\n", "")
                     + "  - id: plain\n" + plain + "default: {to: monolith}\n")
    changes = diff_files(block, moved, env={})
    assert [(c.name, c.kind, c.details) for c in changes] == [
        ("three", "moved", ("moved from #3 to #2",)),
        ("plain", "moved", ("moved from #2 to #3",)),
    ]


def test_diff_command_renders_a_table_and_json(tmp_path: Path, block: Path) -> None:
    new = tmp_path / "new.yaml"
    new.write_text(BLOCK.replace("monolith: 90 ", "monolith: 50 ").replace("catalog: 10 ", "catalog: 50 "))
    result = runner.invoke(app, ["diff", str(block), str(new)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "reads" in result.output and "catalog 10% → 50%" in result.output and "monolith 90% → 50%" in result.output
    as_json = json.loads(runner.invoke(app, ["diff", str(block), str(new), "--json"]).stdout)
    assert as_json["changes"] == [
        {"scope": "route", "name": "reads", "kind": "changed", "details": ["monolith 90% → 50%", "catalog 10% → 50%"]}
    ]
    same = runner.invoke(app, ["diff", str(block), str(block)])
    assert "no changes" in same.output


def test_diff_of_an_invalid_file_fails(tmp_path: Path, block: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BLOCK.replace("default: {to: monolith}", ""))
    with pytest.raises(ConfigError, match="is missing 'default'"):
        diff_files(block, bad, env={})
