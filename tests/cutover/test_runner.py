"""The runner through real processes: façade, monolith, catalog service, PostgreSQL journal."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from facade.config import load_config
from facade.edit import shift_weights
from facade.shadow import ShadowAddon
from tests.cutover.conftest import Stack, journal_entries, journal_has, run_cli, start_cli, traffic, write_plan
from tests.facade.proxy_support import facade
from tests.support import wait_for

CLEAN = """\
steps: [10, 50, 100]
soak: {min_time: 0.3s, min_requests: 30}
interval: 0.1s
gates:
  error_rate: {max_increase: 1, min_requests: 5}
  latency: {max_p99_ratio: 100, min_requests: 5}   # one cold request on a loaded machine is 50x; gating on latency has tests of its own
on_inconclusive: {max_soak: 20s, then: pause}
"""


def weight_of(routing: Path) -> float:
    route = next(r for r in load_config(routing).routes if r.id == "catalog-read")
    return route.to["catalog"]


def explained(entries: list[dict[str, Any]]) -> set[float]:
    """Every weight the journal accounts for: at the start of a run, applied, adopted, or intended."""
    return {float(e["weight"]) for e in entries if e["kind"] in ("run.start", "applied", "adopted", "intent") and e["weight"] is not None}


def test_a_clean_plan_reaches_100_percent(stack: Stack) -> None:
    plan = write_plan(stack.directory / "plan.yaml", stack.routing, [stack.facade_url], stack.journal_url, CLEAN)
    with traffic(stack.facade_url) as load:
        run = run_cli("cutover", "run", str(plan), "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["status"] == "done"
    assert result["actions"] == ["catalog-read: catalog 0% → 10%", "catalog-read: catalog 10% → 50%", "catalog-read: catalog 50% → 100%"]
    assert weight_of(stack.routing) == 100
    assert "# The test's routing file; comments must survive every step." in stack.routing.read_text()
    entries = journal_entries(stack.journal_url)
    kinds = [entry["kind"] for entry in entries]
    assert kinds.count("intent") == 3 and kinds.count("applied") == 3 and kinds[-1] == "done"
    decisions = [e["detail"] for e in entries if e["kind"] == "decision"]
    assert [d["decision"] for d in decisions] == ["advance"] * 3
    assert all(v["result"] == "pass" for d in decisions for v in d["verdicts"])
    assert all(d["requests"] >= 30 for d in decisions)
    # Every transition went to the events file as a JSON line.
    events = [json.loads(line) for line in (stack.directory / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events if e["event"] != "soak"] == [k for k in kinds if k != "soak"]
    assert load.statuses.get(200, 0) > 0 and not [status for status in load.statuses if status >= 500]
    status = json.loads(run_cli("cutover", "status", str(plan), "--json").stdout)
    assert status["status"] == "done" and status["weight"] == 100 and status["lease"] is None
    # The runner's state as Prometheus gauges (textfile collector format).
    gauges = {(f.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families((stack.directory / "cutover.prom").read_text()) for s in f.samples}
    name = status["plan"]
    assert gauges[("strangler_cutover_weight_percent", (("plan", name),))] == 100
    assert gauges[("strangler_cutover_status", (("plan", name), ("status", "done")))] == 1
    assert gauges[("strangler_cutover_gate", (("gate", "error_rate"), ("plan", name)))] == 1


def test_a_failing_candidate_is_rolled_back_to_the_last_passed_step(stack: Stack) -> None:
    plan = write_plan(stack.directory / "plan.yaml", stack.routing, [stack.facade_url], stack.journal_url, CLEAN)
    with traffic(stack.facade_url):
        runner = start_cli("cutover", "run", str(plan), "--json")
        try:
            wait_for(lambda: journal_has(stack.journal_url, lambda e: e["kind"] == "applied" and e["weight"] == 50), timeout=60,
                     what="the 50% step to be served")
            stack.candidate.failing = True
            out, err = runner.communicate(timeout=60)
        finally:
            if runner.poll() is None:
                runner.kill()
    assert runner.returncode == 1, err[-3000:]
    result = json.loads(out)
    assert result["status"] == "rolled_back"
    assert result["actions"][-1] == "catalog-read: catalog 50% → 10%"
    assert weight_of(stack.routing) == 10
    entries = journal_entries(stack.journal_url)
    failed = next(e for e in entries if e["kind"] == "decision" and e["detail"]["decision"] == "fail")
    assert failed["step"] == 1
    gate = next(v for v in failed["detail"]["verdicts"] if v["gate"] == "error_rate")
    assert gate["result"] == "fail" and gate["reading"]["target_errors"] > 0
    # The rollback's intent was journaled before the file changed, and applied after.
    rollback = [e for e in entries if e["id"] > failed["id"]]
    assert [e["kind"] for e in rollback] == ["intent", "applied"]
    assert rollback[1]["detail"]["why"] == "fail" and rollback[1]["weight"] == 10


def test_too_little_traffic_is_inconclusive_and_never_passes(stack: Stack) -> None:
    plan = write_plan(stack.directory / "plan.yaml", stack.routing, [stack.facade_url], stack.journal_url, """\
        steps: [10, 50]
        soak: {min_time: 0.1s, min_requests: 50}
        interval: 0.1s
        gates:
          error_rate: {min_requests: 20}
        on_inconclusive: {max_soak: 1.5s, then: pause}
        """)
    run = run_cli("cutover", "run", str(plan), "--exit-when-paused", "--json")  # no traffic at all
    assert run.returncode == 3, run.stderr[-3000:]
    assert json.loads(run.stdout)["status"] == "paused"
    entries = journal_entries(stack.journal_url)
    soaks = [e["detail"] for e in entries if e["kind"] == "soak"]
    assert len(soaks) >= 3
    assert all(s["decision"] == "soak" and s["verdicts"][0]["result"] == "inconclusive" for s in soaks)
    assert not [e for e in entries if e["kind"] == "decision" and e["detail"]["decision"] == "advance"]
    paused = next(e for e in entries if e["kind"] == "paused")
    assert "0 of 50 requests" in paused["detail"]["reason"]
    assert weight_of(stack.routing) == 10  # held at the step, not passed, not rolled back
    status = json.loads(run_cli("cutover", "status", str(plan), "--json").stdout)
    assert status["status"] == "paused" and status["step"] == "10%" and status["passed"] is None


def facade_version(url: str) -> str:
    return str(httpx.get(f"{url}/_strangler/routes", timeout=5).json()["version"])


def test_dry_run_changes_nothing_and_prints_what_the_run_then_does(stack: Stack) -> None:
    plan = write_plan(stack.directory / "plan.yaml", stack.routing, [stack.facade_url], stack.journal_url, """\
        steps: [10, approve, 50, 100]
        soak: {min_time: 0.1s, min_requests: 0}
        interval: 0.1s
        gates:
          command: {run: "test \\"$CUTOVER_PLAN\\" != ''"}
        """)
    before = (hashlib.sha256(stack.routing.read_bytes()).hexdigest(), facade_version(stack.facade_url), journal_entries(stack.journal_url))
    dry = run_cli("cutover", "run", str(plan), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr[-3000:]
    after = (hashlib.sha256(stack.routing.read_bytes()).hexdigest(), facade_version(stack.facade_url), journal_entries(stack.journal_url))
    assert after == before
    assert not (stack.directory / "events.jsonl").exists()
    text = run_cli("cutover", "run", str(plan), "--dry-run")
    assert text.returncode == 0 and text.stdout.startswith(f"dry run of plan {plan_name(plan)}: nothing is changed\n")
    assert "  1. catalog-read: catalog 0% → 10%\n" in text.stdout
    actions = json.loads(dry.stdout)["actions"]
    assert actions == [
        "catalog-read: catalog 0% → 10%",
        "wait for approval (`strangler cutover approve " + plan_name(plan) + "`)",
        "catalog-read: catalog 10% → 50%",
        "catalog-read: catalog 50% → 100%",
    ]
    runner = start_cli("cutover", "run", str(plan), "--json")
    try:
        wait_for(lambda: journal_has(stack.journal_url, lambda e: e["kind"] == "awaiting_approval"), timeout=60, what="the approve step")
        assert weight_of(stack.routing) == 10
        approve = run_cli("cutover", "approve", str(plan))
        assert approve.returncode == 0, approve.stderr
        out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, err[-3000:]
    assert json.loads(out)["actions"] == actions


def plan_name(plan: Path) -> str:
    return next(line.split(": ", 1)[1] for line in plan.read_text().splitlines() if line.startswith("name: "))


def test_sigkill_at_each_journaled_step_then_run_again_ends_consistent(stack: Stack) -> None:
    plan = write_plan(stack.directory / "plan.yaml", stack.routing, [stack.facade_url], stack.journal_url, """\
        steps: [10, 50, 100]
        soak: {min_time: 0.2s, min_requests: 0}
        interval: 0.05s
        """)
    offset, kills = 1, 0
    while True:
        count = len(journal_entries(stack.journal_url))
        with start_cli("cutover", "run", str(plan), "--json") as runner:
            try:
                wait_for(lambda: runner.poll() is not None or len(journal_entries(stack.journal_url)) >= count + offset,
                         timeout=60, interval=0.002, what=f"journal entry {count + offset}")
                if runner.poll() is None:
                    runner.send_signal(signal.SIGKILL)
                    kills += 1
                runner.communicate(timeout=30)
            finally:
                if runner.poll() is None:
                    runner.kill()
        entries = journal_entries(stack.journal_url)
        # Never a weight the journal does not explain, never a half-written file.
        assert weight_of(stack.routing) in explained(entries)
        if runner.returncode == 0:
            break
        offset += 1
    assert kills >= 5
    assert weight_of(stack.routing) == 100
    entries = journal_entries(stack.journal_url)
    assert entries[-1]["kind"] == "done"
    assert [e["weight"] for e in entries if e["kind"] == "applied"] == [10, 50, 100]
    # Each intent is followed by its applied entry, whoever finished it.
    intents = [e for e in entries if e["kind"] == "intent"]
    assert [e["weight"] for e in intents] == [10, 50, 100]


def test_the_step_waits_until_every_replica_serves_the_new_version(stack: Stack) -> None:
    with facade(stack.routing, watch_interval=1.5) as (lagging_url, lagging):
        plan = write_plan(stack.directory / "plan.yaml", stack.routing, [stack.facade_url, lagging_url], stack.journal_url, """\
            steps: [10]
            soak: {min_time: 0s, min_requests: 0}
            interval: 0.05s
            """)
        run = run_cli("cutover", "run", str(plan), "--json")
        assert run.returncode == 0, run.stderr[-3000:]
        entries = journal_entries(stack.journal_url)
        applied = next(e for e in entries if e["kind"] == "applied")
        expected = hashlib.sha256(stack.routing.read_bytes()).hexdigest()[:12]
        assert applied["file_hash"] == expected
        # Both replicas served the new file when `applied` was journaled, the lagging one too.
        assert set(applied["detail"]["replicas"]) == {stack.facade_url, lagging_url}
        assert applied["detail"]["replicas"][lagging_url] == lagging.reloader.version
        assert lagging.reloader.content_hash == expected
        intent = next(e for e in entries if e["kind"] == "intent")
        assert applied["id"] > intent["id"]
        assert lagging.reloader.loaded_at <= journal_time(stack, applied["id"])


def journal_time(stack: Stack, entry_id: int) -> float:
    import psycopg2

    conn = psycopg2.connect(stack.journal_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT at FROM strangler.cutover_journal WHERE id = %s", (entry_id,))
            return float(cur.fetchone()[0])
    finally:
        conn.close()


def test_a_hand_edit_during_the_run_pauses_it_and_abort_returns_to_zero(stack: Stack) -> None:
    plan = write_plan(stack.directory / "plan.yaml", stack.routing, [stack.facade_url], stack.journal_url, """\
        steps: [10, 50]
        soak: {min_time: 60s, min_requests: 0}
        interval: 0.05s
        """)
    runner = start_cli("cutover", "run", str(plan), "--exit-when-paused", "--json")
    try:
        wait_for(lambda: journal_has(stack.journal_url, lambda e: e["kind"] == "soak"), timeout=60, what="the 10% step to soak")
        shift_weights(stack.routing, "catalog-read", {"catalog": 30})  # someone edits routing.yaml by hand
        out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 3, err[-3000:]
    paused = journal_has(stack.journal_url, lambda e: e["kind"] == "paused")
    assert "was edited by hand during the run" in paused["detail"]["reason"]
    assert weight_of(stack.routing) == 30  # the runner did not fight the operator
    status = run_cli("cutover", "status", str(plan))
    assert "edited by hand" in status.stdout
    abort = run_cli("cutover", "abort", str(plan))
    assert abort.returncode == 0, abort.stderr[-3000:]
    assert weight_of(stack.routing) == 0
    entries = journal_entries(stack.journal_url)
    assert entries[-1]["kind"] == "applied" and entries[-1]["detail"]["why"] == "abort"
    assert 30 in explained(entries) or any(e["kind"] == "intent" and e["detail"]["action"]["old"] == 30 for e in entries)


def test_rollback_to_a_step_and_a_second_runner_cannot_act(stack: Stack) -> None:
    plan = write_plan(stack.directory / "plan.yaml", stack.routing, [stack.facade_url], stack.journal_url, """\
        steps: [10, 50, 100]
        soak: {min_time: 0.1s, min_requests: 0}
        interval: 0.05s
        """)
    assert run_cli("cutover", "run", str(plan)).returncode == 0
    assert weight_of(stack.routing) == 100
    rollback = run_cli("cutover", "rollback", str(plan), "--to", "10")
    assert rollback.returncode == 0, rollback.stderr
    assert weight_of(stack.routing) == 10
    unknown = run_cli("cutover", "rollback", str(plan), "--to", "33")
    assert unknown.returncode == 1 and unknown.stderr.startswith("FAILED: --to '33' is not a step of plan")
    # While one runner holds the lease, another refuses to act.
    slow = write_plan(stack.directory / "plan.yaml", stack.routing, [stack.facade_url], stack.journal_url, """\
        steps: [10, 50, 100]
        soak: {min_time: 60s, min_requests: 0}
        interval: 0.05s
        """)
    seen = len(journal_entries(stack.journal_url))
    first = start_cli("cutover", "run", str(slow))
    try:
        wait_for(lambda: journal_has(stack.journal_url, lambda e: e["kind"] == "soak" and e["id"] > seen), timeout=60,
                 what="the first runner to soak")
        second = run_cli("cutover", "run", str(slow), timeout=60)
        assert second.returncode == 1
        assert "holds the lease of plan" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.communicate(timeout=30)


def test_the_shadow_step_mirrors_every_read_and_judges_only_its_own_window(pair: Any, database: str, tmp_path: Path) -> None:
    from tests.cutover.conftest import write_routing

    routing = write_routing(tmp_path / "routing.yaml", pair.monolith_url, pair.catalog_url, shadow=True)
    notified = tmp_path / "notified.jsonl"
    with facade(routing, addon_factories=(ShadowAddon.for_config,)) as (url, _app):
        plan = write_plan(tmp_path / "plan.yaml", routing, [url], database, f"""\
            steps: [shadow, 10]
            soak: {{min_time: 0.3s, min_requests: 20}}
            interval: 0.1s
            gates:
              shadow_mismatch: {{max_mismatch: 5, min_compared: 10}}
            on_inconclusive: {{max_soak: 30s, then: pause}}
            events: {{notify: "cat >> {notified}"}}
            """)
        with traffic(url):
            run = run_cli("cutover", "run", str(plan), "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["actions"] == [
        "catalog-read: shadow to catalog 0% → 100% sample",
        "catalog-read: catalog 0% → 10%",
    ]
    route = next(r for r in load_config(routing).routes if r.id == "catalog-read")
    assert route.shadow is not None and route.shadow.sample == 100 and route.to["catalog"] == 10
    entries = journal_entries(database)
    shadow_pass = next(e for e in entries if e["kind"] == "decision" and e["step"] == 0)
    verdict = shadow_pass["detail"]["verdicts"][0]
    assert verdict["gate"] == "shadow_mismatch" and verdict["result"] == "pass"
    assert verdict["reading"]["compared"] >= 10
    # Every transition reached the notify command on its stdin, one JSON line each.
    lines = [json.loads(line) for line in notified.read_text().splitlines()]
    assert [line["event"] for line in lines if line["event"] != "soak"][-1] == "done"


def test_pause_holds_the_step_without_rolling_back_and_resume_carries_on(stack: Stack) -> None:
    plan = write_plan(stack.directory / "plan.yaml", stack.routing, [stack.facade_url], stack.journal_url, """\
        steps: [{weight: 10, soak: {min_time: 10s, min_requests: 0}}, 50]
        soak: {min_time: 0.5s, min_requests: 0}
        interval: 0.05s
        """)
    # The 10% soak outlasts starting the `pause` command (a new Python process) on a busy machine.
    runner = start_cli("cutover", "run", str(plan), "--exit-when-paused", "--json")
    try:
        wait_for(lambda: journal_has(stack.journal_url, lambda e: e["kind"] == "soak"), timeout=60, what="the 10% step to soak")
        pause = run_cli("cutover", "pause", str(plan))
        assert pause.returncode == 0 and "pause journaled" in pause.stdout
        out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 3, err[-3000:]
    assert weight_of(stack.routing) == 10  # held, not rolled back
    paused = journal_has(stack.journal_url, lambda e: e["kind"] == "paused")
    assert "paused by `strangler cutover pause`" in paused["detail"]["reason"]
    assert run_cli("cutover", "resume", str(plan)).returncode == 0
    again = run_cli("cutover", "run", str(plan), "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["actions"] == ["catalog-read: catalog 10% → 50%"]
    assert weight_of(stack.routing) == 50
