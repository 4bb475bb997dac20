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
