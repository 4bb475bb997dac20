"""The plan file: the sample validates; bad input is one clear located line each; the schema."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from cutover.exceptions import PlanError
from cutover.plan import json_schema, load_plan
from tests.cutover.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "extracted" / "catalog" / "cutover.yaml"


def test_the_sample_plan_validates_against_the_sample_routing_file() -> None:
    plan = load_plan(SAMPLE, env={})
    assert plan.routes == ("catalog-read",) and plan.target == "catalog"
    assert [step.label() for step in plan.steps] == ["shadow", "1%", "5%", "25%", "50%", "approve", "100%"]
    assert plan.routing == str(ROOT / "routing.yaml")  # relative to the plan
    assert plan.writes is not None and plan.writes.ownership["catalog.products"].legacy == ("stock",)


def test_the_sample_plan_matches_the_json_schema() -> None:
    data = YAML(typ="safe").load(SAMPLE.read_text())
    jsonschema.validate(data, json_schema())
    assert json.loads((ROOT / "cutover.schema.json").read_text()) == json_schema()


def plan_text(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "plan.yaml"
    head = f"version: 1\nname: t\nrouting: {ROOT / 'routing.yaml'}\nfacade: {{replicas: [http://127.0.0.1:1]}}\n"
    path.write_text(head + textwrap.dedent(body))
    return path


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("routes: [catalog-reed]\ntarget: catalog\nsteps: [5]\n", "plan.yaml:5:10: route 'catalog-reed' is not in"),
        ("routes: [catalog-read]\ntarget: catalgo\nsteps: [5]\n", "plan.yaml:6:9: 'catalgo' is not a declared upstream"),
        ("routes: [catalog-read]\ntarget: catalog\nsteps: [25, 5]\n", "weight 5 does not rise above 25"),
        ("routes: [catalog-read]\ntarget: catalog\nsteps: [5, shadow]\n", "`shadow` comes before the first weight"),
        ("routes: [catalog-read]\ntarget: catalog\nsteps: [5, banana]\n", "plan.yaml:7:12: steps[1]: step 'banana' is not a weight"),
        ("routes: [catalog-read]\ntarget: catalog\nsteps: [150]\n", "less than or equal to 100"),
        ("routes: [catalog-read]\ntarget: catalog\nsteps: [5]\non_fail: back\n", "on_fail"),
        ("routes: [catalog-read]\ntarget: catalog\nsteps: [5]\ngates: {eror_rate: {}}\n", "did you mean 'error_rate'?"),
        (
            "routes: [catalog-read]\ntarget: catalog\nsteps: [5]\nwrites: {routes: [w], ownership: {t: {service: [a], legacy: [a]}}}\n",
            "owned by both sides",
        ),
        ("routes: [catalog-read]\ntarget: catalog\nsteps: [5]\njournal: {database_url: '${NOPE_URL}'}\n", "${NOPE_URL} is not set"),
        ("routes: [catalog-read]\ntarget: catalog\nsteps: [5]\ninterval: 20s\njournal: {lease: 30s}\n", "shorter than two gate intervals"),
    ],
)
def test_bad_plans_get_one_located_line_each(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(PlanError) as caught:
        load_plan(plan_text(tmp_path, body), env={})
    assert any(expected in str(problem) for problem in caught.value.problems), caught.value.problems
    assert all(str(problem).startswith(str(tmp_path / "plan.yaml") + ":") for problem in caught.value.problems)


def test_the_cli_prints_problems_not_a_traceback(tmp_path: Path) -> None:
    path = plan_text(tmp_path, "routes: [catalog-read]\ntarget: catalgo\nsteps: [5]\n")
    run = run_cli("cutover", "plan", str(path))
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [f"{path}:6:9: 'catalgo' is not a declared upstream of {ROOT / 'routing.yaml'}; declared: monolith, catalog"]


def test_an_unreachable_journal_database_is_a_failed_line(tmp_path: Path) -> None:
    path = plan_text(tmp_path, "routes: [catalog-read]\ntarget: catalog\nsteps: [5]\njournal: {database_url: 'postgresql://x@127.0.0.1:1/none'}\n")
    run = run_cli("cutover", "status", str(path))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("FAILED: cannot connect to the journal database")
