"""bench/cutover.py --quick end to end: the sample stack under write load, the naive flip as
the baseline (what it loses depends on the timing: a create in flight at the monolith while the
catalog hands out the same id), and the gated write cutover when `cutover.writes` is there (it
must lose, double and fail nothing). The checker's counting itself is tested in
tests/scripts/test_write_check.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_measures_the_naive_flip_and_the_gated_switches() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cutover.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=400, check=False, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    result = json.loads(run.stdout)
    phases = {phase["phase"]: phase for phase in result["phases"]}
    naive = phases["naive"]
    assert [s["label"] for s in naive["switches"]] == ["naive flip to catalog", "naive flip back"]
    assert naive["writes_per_s"] > 30  # the load ran near its quick rate of 60 writes/s
    # Every lost write is placed in a switch's span (the load's steady start loses nothing).
    for store in ("legacy", "service"):
        assert sum(s["per_store"][store]["lost"] for s in naive["switches"]) == naive["stores"][store]["lost"], naive["stores"]
        assert naive["stores"][store]["rows"] >= 40  # the pool, at least, is in both stores
    flip = naive["switches"][0]
    assert flip["latency_before_ms"]["n"] > 0 and flip["latency_window_ms"]["n"] > 0
    assert "Write switches under load" in run.stderr
    gated = phases["gated"]
    assert [s["direction"] for s in gated["switches"]] == ["forward", "back", "forward"]
    for switch in gated["switches"]:
        assert switch["outcome"] == "switched", switch
        assert (switch["lost"], switch["doubled"], switch["client_errors"]) == (0, 0, 0), switch
        assert switch["estimate_s"] is not None and switch["pause_s"] is not None
    assert gated["stores"]["legacy"]["lost"] == 0 and gated["stores"]["service"]["lost"] == 0
