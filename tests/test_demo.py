"""The demo, end to end, on the session's PostgreSQL: what `make demo` runs, smaller.

Both tests run the real `strangler demo` command in a process of its own, as `make demo` does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from common.postgres import EmbeddedPostgres
from tests.support import wait_for


def demo_command(pg: EmbeddedPostgres, work_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "scripts", "demo", "--database-url", pg.url(), "--work-dir", str(work_dir),
        "--products", "300", "--requests-per-step", "120", "--write-rate", "40", "--json", *extra,
    ]


# Wide enough that rich does not wrap the paths it prints.
DEMO_ENV = {**os.environ, "COLUMNS": "400"}


def answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


def slots_left(pg: EmbeddedPostgres) -> list[str]:
    import psycopg2

    conn = psycopg2.connect(pg.url())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT slot_name FROM pg_replication_slots WHERE database = 'demo_legacy'")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def test_demo_cuts_reads_over_with_the_runner_and_a_rollback(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    run = subprocess.run(demo_command(pg, tmp_path / "demo"), capture_output=True, text=True, timeout=280, check=False, env=DEMO_ENV)
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout)
    assert result["failures"] == []
    # CDC filled the catalog store (snapshot, then a live change) and verify ends clean.
    cdc = result["cdc"]
    assert cdc["snapshot_rows"] >= 300
    assert cdc["verify_identical"]
    # The seeded products, and those the write load created (through the monolith, then the catalog).
    created = result["writes"]["stores"]["legacy"]["rows"] if result["writes"] else 0
    assert cdc["verify_tables"]["catalog.products"]["matching"] == 300 + created
    buggy, fixed = result["shadow"]
    assert buggy["compared"] == 120 and fixed["compared"] == 120
    assert "GET /api/products/{id} $.price" in buggy["real_fields"]
    assert buggy["mismatch_rate"] > 0.5
    assert fixed["mismatch_rate"] == 0 and fixed["real_fields"] == []
    assert Path(buggy["report_path"]).read_text().count("<svg") >= 1
    # The terminal output names the report and its headline numbers.
    assert f"report: {buggy['report_path']}" in run.stderr
    assert f"shadow report (with-discrepancy): 120 compared, mismatch rate {buggy['mismatch_rate']:.1%}" in run.stderr
    assert "Catalog reads through the façade, per cutover step" in run.stderr
    # The cutover ran twice through the runner: the faulty build (serve --demo-errors) failed the
    # error-rate gate at 50% and the runner rolled back to 10% itself; the clean run reached 100%.
    cutover = result["cutover"]
    faulty, clean = cutover["runs"]
    assert faulty["status"] == "rolled_back"
    assert faulty["actions"] == ["catalog-read: catalog 0% → 10%", "catalog-read: catalog 10% → 50%", "catalog-read: catalog 50% → 10%"], [
        (step["weight"], step["decision"], [v for v in step["verdicts"] if v["result"] != "pass"]) for step in result["steps"]
    ]
    assert clean["status"] == "done"
    assert clean["actions"] == ["catalog-read: catalog 10% → 50%", "catalog-read: catalog 50% → 100%"]
    steps = result["steps"]
    assert [(s["run"], s["weight"], s["decision"]) for s in steps] == [
        ("with-fault", 10, "advance"), ("with-fault", 50, "fail"), ("clean", 50, "advance"), ("clean", 100, "advance"),
    ]
    failed = steps[1]
    gate = next(v for v in failed["verdicts"] if v["gate"] == "error_rate")
    assert gate["result"] == "fail" and gate["reading"]["target_errors"] > 0
    assert failed["errors"] > 0  # the readers saw the 500s the gate counted
    for step in steps:
        verdicts = {v["gate"]: v["result"] for v in step["verdicts"]}
        assert set(verdicts) == {"error_rate", "latency", "cdc", "verify"}
        if step["decision"] != "advance":
            continue
        assert step["errors"] == 0 and set(verdicts.values()) == {"pass"}
        assert step["total"] >= 120
        # Sticky buckets over anonymous clients: the share follows the weight loosely at 10/50 %,
        # exactly at 100 %.
        share = step["per_upstream"]["catalog"] / step["total"]
        if step["weight"] == 100:
            assert share == 1
        else:
            assert abs(share - step["weight"] / 100) < 0.3
    # The journal's summary (what `strangler cutover status --json` gives) ends done at 100%,
    # and it explains the rollback: a failed decision at 50%, then the change back to 10%.
    status = cutover["status"]
    assert status["status"] == "done" and status["weight"] == 100 and status["step"] == "100%"
    kinds = [(item["kind"], item["text"]) for item in status["history"]]
    fail_at = next(i for i, (kind, text) in enumerate(kinds) if kind == "decision" and text.startswith("50%: fail"))
    assert kinds[fail_at + 1:fail_at + 3] == [("intent", "catalog-read: catalog 50% → 10%"), ("applied", "catalog-read: catalog 50% → 10%")]
    assert kinds[-1] == ("done", "every step passed")
    assert "rolled back to catalog 10% by the runner" in run.stderr
    events = [json.loads(line) for line in (tmp_path / "demo" / "cutover-events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("run.start") == 2
    # The write cutover under live writes (when this build has the write switch): nothing lost,
    # doubled or failed, the pause measured and estimated, both stores read back.
    if importlib.util.find_spec("cutover.writes") is None:
        assert result["writes"] is None and "no write cutover" in run.stderr
    else:
        (switch,) = result["writes"]["switches"]
        assert switch["outcome"] == "switched", switch
        assert (switch["lost"], switch["doubled"], switch["client_errors"]) == (0, 0, 0), switch
        assert switch["pause_s"] is not None and switch["estimate_s"] is not None
        assert switch["latency_window_ms"]["n"] > 0
        assert result["writes"]["stores"]["legacy"]["rows"] >= 100 and result["writes"]["stores"]["service"]["lost"] == 0
        assert "write cutover: switched; 0 lost, 0 doubled, 0 client errors" in run.stderr
    # Everything it started is stopped, and its replication slot is gone.
    for url in result["services"].values():
        assert not answers(url), f"{url} still answers after the demo ended"
    assert slots_left(pg) == []


def test_sigterm_stops_everything_the_demo_started(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    lines: list[str] = []
    with subprocess.Popen(demo_command(pg, tmp_path / "demo"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=DEMO_ENV) as process:
        assert process.stderr is not None
        stderr = process.stderr
        reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")), daemon=True)
        reader.start()
        try:
            # Interrupted once CDC streams: the slot it created must go as well.
            wait_for(lambda: any("CDC snapshot done" in line for line in lines), timeout=180, what="CDC to stream")
            facade_line = next(line for line in lines if "façade at http://" in line)
            url = facade_line.split("façade at ", 1)[1].split()[0]
            assert answers(f"{url}/_strangler/health")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 130
        finally:
            if process.poll() is None:
                process.kill()
            reader.join(timeout=10)
    assert any("interrupted; everything the demo started has been stopped" in line for line in lines)
    assert not answers(f"{url}/_strangler/health")
    monolith = next(line for line in lines if "monolith at http://" in line).split("monolith at ", 1)[1].split(",")[0]
    assert not answers(f"{monolith}/healthz")
    assert slots_left(pg) == []


def children_of(pid: int) -> list[int]:
    """Every live process whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stay_up_prints_where_the_stack_is_and_cleans_up_on_sigterm(tmp_path: Path) -> None:
    import cutover

    work_dir = tmp_path / "stack"
    command = [sys.executable, "-m", "scripts", "demo", "--stay-up", "--json", "--products", "200", "--work-dir", str(work_dir)]
    env = {key: value for key, value in DEMO_ENV.items() if key != "STRANGLER_DATABASE_URL"}  # its own embedded PostgreSQL
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdout is not None and process.stderr is not None
        errors: list[str] = []
        reader = threading.Thread(target=lambda: errors.extend(iter(process.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        try:
            line = process.stdout.readline()  # the one line, once everything is up
            assert line, "".join(errors)[-3000:]
            info = json.loads(line)
            facade = info["services"]["facade"]
            product = httpx.get(f"{facade}/api/products/1", timeout=10)
            assert product.status_code == 200 and product.json()["id"] == 1
            assert httpx.get(f"{info['services']['admin']}/health", timeout=5).json()["status"] == "ok"
            # What a user needs for `strangler cutover ...` by hand: the plan loads with the printed env
            # and names the stack's routing file, façade and write route.
            plan = cutover.load_plan(Path(info["files"]["plan"]), env={**os.environ, **info["env"]})
            assert str(plan.routing) == info["files"]["routing"]
            assert plan.facade.replicas == (facade,) and plan.writes is not None and plan.writes.routes == ("catalog-write",)
            assert info["env"]["STRANGLER_FACADE_URL"] == facade
            assert Path(info["files"]["routing"]).is_file() and Path(info["files"]["sync_spec"]).is_file()
            # The reverse stream runs beside the forward one, and the plan's write switch names its spec.
            assert info["files"]["reverse_spec"] and plan.writes.reverse_sync == info["files"]["reverse_spec"]
            data_dir = work_dir / "postgres"
            assert data_dir.is_dir()
            children = children_of(process.pid)
            assert len(children) >= 6  # PostgreSQL, monolith, catalog, façade, both CDC streams
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, "".join(errors)[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
            reader.join(timeout=10)
    assert [pid for pid in children if alive(pid)] == []
    assert not data_dir.exists()
    for url in (facade, info["services"]["monolith"], info["services"]["catalog"]):
        assert not answers(url), f"{url} still answers after the stack stopped"
    assert any("stopped; everything the stack started" in line for line in errors)
