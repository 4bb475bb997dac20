"""The runner through real processes: façade, monolith, catalog service, PostgreSQL journal."""

from __future__ import annotations

import json

from facade.config import load_config
from tests.cutover.conftest import Stack, journal_entries, run_cli, traffic, write_plan

CLEAN = """\
steps: [10, 50, 100]
soak: {min_time: 0.3s, min_requests: 30}
interval: 0.1s
gates:
  error_rate: {max_increase: 1, min_requests: 5}
  latency: {max_p99_ratio: 20, min_requests: 5}
on_inconclusive: {max_soak: 20s, then: pause}
"""


def weight_of(stack: Stack) -> float:
    route = next(r for r in load_config(stack.routing).routes if r.id == "catalog-read")
    return route.to["catalog"]


def test_a_clean_plan_reaches_100_percent(stack: Stack) -> None:
    plan = write_plan(stack.directory / "plan.yaml", stack.routing, [stack.facade_url], stack.journal_url, CLEAN)
    with traffic(stack.facade_url) as load:
        run = run_cli("cutover", "run", str(plan), "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["status"] == "done"
    assert result["actions"] == ["catalog-read: catalog 0% → 10%", "catalog-read: catalog 10% → 50%", "catalog-read: catalog 50% → 100%"]
    assert weight_of(stack) == 100
    assert "# The test's routing file; comments must survive every step." in stack.routing.read_text()
    kinds = [entry["kind"] for entry in journal_entries(stack.journal_url)]
    assert kinds.count("intent") == 3 and kinds.count("applied") == 3 and kinds[-1] == "done"
    assert load.statuses.get(200, 0) > 0 and not [status for status in load.statuses if status >= 500]
