"""The shared loader on a format of its own: positions, hints, interpolation, unreadable files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from common.yamlfile import FileError, Found, check_text, interpolate, load_model


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    weight: int = Field(ge=0, le=100)
    soak: float = 0.0


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    database: str = ""
    steps: tuple[Step, ...]


def _interpolate(data: dict[str, Any], env: Any) -> list[Found]:
    try:
        data["database"] = interpolate(str(data.get("database", "")), env)
    except ValueError as exc:
        return [Found(("database",), False, f"database: {exc}")]
    return []


def test_every_problem_is_placed_at_its_key_or_value() -> None:
    text = "name: cutover\nsteps:\n  - {weight: 5}\n  - {wieght: 25}\n  - {weight: 250}\n"
    plan, problems = check_text(text, "plan.yaml", Plan, hints={"weight": "give the percentage, e.g. weight: 25"})
    assert plan is None
    assert [str(problem) for problem in problems] == [
        "plan.yaml:4:5: steps[1] is missing 'weight'; give the percentage, e.g. weight: 25.",
        "plan.yaml:4:6: unknown key 'wieght' (did you mean 'weight'?); allowed here: weight, soak.",
        "plan.yaml:5:14: steps[2].weight should be less than or equal to 100; got 250.",
    ]


def test_interpolation_problems_hide_what_follows_from_them() -> None:
    text = "name: x\ndatabase: ${PLAN_DB}\nsteps: []\n"
    _, problems = check_text(text, "plan.yaml", Plan, env={}, prepare=_interpolate)
    assert [str(problem) for problem in problems] == [
        "plan.yaml:2:11: database: ${PLAN_DB} is not set; set PLAN_DB or give a default: ${PLAN_DB:-<value>}"
    ]
    plan, _ = check_text(text, "plan.yaml", Plan, env={"PLAN_DB": "postgresql://db"}, prepare=_interpolate)
    assert plan is not None and plan.database == "postgresql://db"


def test_interpolate_strict_and_lenient() -> None:
    assert interpolate("${A:-one}/${B}", {"B": "two"}) == "one/two"
    with pytest.raises(ValueError, match=r"\$\{B\} is not set"):
        interpolate("${B}", {})
    assert interpolate("x${B}y", {}, strict=False) == "xy"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name: [x\n", "plan.yaml:2:1: this is not valid YAML"),
        (b"", "plan.yaml:1:1: the file is empty; it must be a mapping."),
        (b"- a\n", "plan.yaml:1:1: the file must be a mapping."),
        (b"name: \xff\n", "plan.yaml:1:1: the file is not UTF-8 text"),
    ],
)
def test_load_model_raises_one_error_with_the_problem(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "plan.yaml"
    path.write_bytes(content)
    with pytest.raises(FileError) as info:
        load_model(path, Plan)
    assert str(info.value).startswith(str(tmp_path / message))


def test_a_missing_file_is_named() -> None:
    with pytest.raises(FileError, match=r"^no/such/plan.yaml:1:1: cannot read the file: No such file or directory.$"):
        load_model("no/such/plan.yaml", Plan)


# -- the fast path: libyaml's plain data must be ruamel's, or it must step aside -------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from ruamel.yaml import YAML  # noqa: E402

from common import yamlfile  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _ruamel(text: str) -> Any:
    return yamlfile.plain(YAML(typ="rt").load(text))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789.-+eE_:xobXOBinfaINFyesYESnoNOtrueTRUElsLS~=< ", max_size=12))
def test_a_plain_scalar_reads_as_ruamel_reads_it_or_the_fast_path_steps_aside(scalar: str) -> None:
    text = f"key: {scalar}\n"
    try:
        expected = _ruamel(text)
    except Exception:  # not YAML for ruamel: the fast path must not say otherwise by succeeding differently
        expected = None
    fast = yamlfile._fast_data(text)
    if fast is not None and expected is not None:
        assert fast == expected and type(fast["key"]) is type(expected["key"]), (scalar, fast, expected)


def test_every_yaml_file_of_the_project_reads_the_same_both_ways() -> None:
    files = [path for top in ("routing.yaml", "extracted", "cdc", "cutover", "facade", "tests", "docker-compose.yml")
             for path in ([ROOT / top] if (ROOT / top).is_file() else sorted((ROOT / top).rglob("*.y*ml")))]
    fast_ones = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        fast = yamlfile._fast_data(text)
        if fast is not None:
            assert fast == _ruamel(text), path
            fast_ones.append(path.relative_to(ROOT).as_posix())
    # The sample routing file, sync specs and plan take the fast path; docker-compose.yml's merge keys do not.
    assert {"routing.yaml", "extracted/catalog/sync.yaml", "extracted/catalog/cutover.yaml"} <= set(fast_ones), fast_ones


def test_the_fast_path_gives_the_same_model_and_a_problem_still_gets_its_place() -> None:
    text = "name: p\nsteps:\n  - {weight: 10, soak: 1.5}\n  - weight: 100\n"
    assert yamlfile._fast_data(text) is not None
    config, problems = check_text(text, "plan.yaml", Plan)
    assert problems == [] and config == Plan(name="p", steps=(Step(weight=10, soak=1.5), Step(weight=100)))
    for bad, where in (("name: p\nsteps:\n  - weight: 101\n", (3, 13)), ("name: p\nname: q\nsteps: []\n", (2, 1))):
        config, problems = check_text(bad, "plan.yaml", Plan)
        assert config is None and (problems[0].line, problems[0].column) == where, problems
