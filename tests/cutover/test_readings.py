"""The gates' CDC sources for real: `cdc status` and verify over a sync streamed into the catalog
store by `strangler cdc run`, read by `strangler cutover plan`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.postgres import EmbeddedPostgres
from extracted.catalog.migrate import migrate
from monolith.seed import SeedSizes
from tests.cutover.conftest import journal_entries, run_cli, write_plan, write_routing
from tests.monolith.conftest import seeded_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def synced(pg: EmbeddedPostgres, tmp_path: Path) -> Iterator[Path]:
    """A legacy database streamed into a fresh catalog store by `cdc run` (snapshot, then caught up)."""
    legacy = seeded_database(pg.create_database(f"cut_legacy_{uuid.uuid4().hex[:8]}"), SeedSizes(products=30, categories=3, users=1, orders=2, seed=3))
    store = pg.create_database(f"cut_store_{uuid.uuid4().hex[:8]}")
    migrate(store)
    spec = tmp_path / "sync.yaml"
    text = (ROOT / "extracted" / "catalog" / "sync.yaml").read_text()
    spec.write_text(text.replace("${STRANGLER_MONOLITH_DATABASE_URL:-}", legacy).replace("${STRANGLER_CATALOG_DATABASE_URL:-}", store)
                    .replace("name: catalog ", f"name: cut{uuid.uuid4().hex[:6]} "))
    run = run_cli("cdc", "run", "--spec", str(spec), "--until-caught-up", "--idle-timeout", "0.5")
    assert run.returncode == 0, run.stderr[-3000:]
    try:
        yield spec
    finally:
        run_cli("cdc", "drop", "--spec", str(spec))


def test_plan_reads_cdc_status_and_verify_and_writes_nothing(synced: Path, tmp_path: Path) -> None:
    routing = write_routing(tmp_path / "routing.yaml", "http://127.0.0.1:9", "http://127.0.0.1:9")
    plan = write_plan(tmp_path / "plan.yaml", routing, ["http://127.0.0.1:9"], "", """\
        sync: sync.yaml
        steps: [10]
        gates:
          cdc: {max_lag: 60s}
          verify: {max_age: 10m, wait: 5s}
        """)
    # The journal defaults to the sync spec's target database.
    plan.write_text(plan.read_text().replace('journal: {database_url: "", lease: 30s}\n', ""))
    overview = run_cli("cutover", "plan", str(plan), "--json")
    result = json.loads(overview.stdout)
    verdicts = {v["gate"]: v for v in result["verdicts"]}
    assert verdicts["verify"]["result"] == "pass", verdicts
    assert "rows identical" in verdicts["verify"]["reason"]
    assert verdicts["cdc"]["reading"]["dead_letters"] == 0
    # The façade of this plan does not answer: the plan is not ready, and says why in one line.
    assert overview.returncode == 1
    assert "FAILED: facade: cannot reach the façade replica http://127.0.0.1:9" in overview.stderr
    assert "Traceback" not in overview.stderr
    store = next(line.split('"')[1] for line in synced.read_text().splitlines() if line.strip().startswith("url:") and "cut_store" in line)
    assert journal_entries(store) == []  # `plan` reads; it writes no journal
