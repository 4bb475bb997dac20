"""The demo, end to end, on the session's PostgreSQL: what `make demo` runs, smaller."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from scripts.demo import STEPS, run_demo
from scripts.postgres import EmbeddedPostgres


def test_demo_shifts_reads_step_by_step(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    with open(tmp_path / "out.txt", "w") as out:
        env = run_demo(
            database_url=pg.url(), products=300, requests_per_step=120, work_dir=tmp_path / "demo",
            console=Console(file=out, width=120), db_prefix="demotest",
        )
    # CDC filled the catalog store (snapshot, then a live change) and verify ends clean.
    assert env.cdc is not None
    assert env.cdc.snapshot_rows >= 300
    assert env.cdc.live_change_ms > 0
    assert env.cdc.verify_identical
    assert env.cdc.verify_tables["catalog.products"]["matching"] == 300
    buggy, fixed = env.shadow_rounds
    assert buggy.compared == 120 and fixed.compared == 120
    assert "GET /api/products/{id} $.price" in buggy.real_fields
    assert buggy.mismatch_rate > 0.5
    assert fixed.mismatch_rate == 0 and fixed.real_fields == []
    assert Path(buggy.report_path).read_text().count("<svg") >= 1
    assert [r.weight for r in env.results] == list(STEPS)
    for result in env.results:
        assert result.errors == 0
        assert result.total == 120
        share = result.per_upstream["catalog"] / result.total
        # Sticky buckets over 60 anonymous clients: the share follows the weight loosely
        # at 10/50 %, exactly at 0 and 100 %.
        if result.weight in (0, 100):
            assert share == result.weight / 100
        else:
            assert abs(share - result.weight / 100) < 0.3
    # Everything it started is stopped.
    assert env.group.children == []
