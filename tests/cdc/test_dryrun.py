"""`cdc run --dry-run`: counts and reasons on a real PostgreSQL, and the databases left exactly as found."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest
from typer.testing import CliRunner

from scripts.cli import app
from tests.cdc.apply_fixtures import ROOT, SYNC_YAML, execute, legacy_and_target, query, seed
from common.waiting import wait_until

__all__ = ["legacy_and_target"]

runner = CliRunner()


def _state(url: str) -> dict[str, Any]:
    """What a dry-run must not change: slots, publications, schemas, tables and their rows, origins."""
    tables = query(url, "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")
    return {
        "slots": query(url, "SELECT slot_name::text, slot_type FROM pg_replication_slots ORDER BY 1"),
        "publications": query(url, "SELECT pubname::text FROM pg_publication ORDER BY 1"),
        "schemas": query(url, "SELECT nspname::text FROM pg_namespace ORDER BY 1"),
        "origins": query(url, "SELECT roname FROM pg_replication_origin ORDER BY 1"),
        "rows": {t: query(url, f"SELECT count(*) FROM {t}")[0][0] for (t,) in tables},
    }


def _dry_run(legacy: str, target: str, *extra: str) -> Any:
    return runner.invoke(app, ["cdc", "run", "--spec", str(SYNC_YAML), "--source-url", legacy, "--target-url", target,
                               "--dry-run", *extra])


def _with_bad_rows(legacy: str, target: str) -> None:
    """40 products: 2 internal (filtered), one priced in fractions of a cent (the mapping rejects it),
    one with negative stock (the service's CHECK constraint refuses it)."""
    execute(legacy, "ALTER TABLE catalog_product ALTER COLUMN price TYPE numeric(10,3)")
    seed(legacy, 40)
    execute(legacy, "UPDATE catalog_product SET sku = '__internal-' || id WHERE id IN (3, 4)")
    execute(legacy, "UPDATE catalog_product SET price = 1.005 WHERE id = 7")
    execute(legacy, "UPDATE catalog_product SET stock = -1 WHERE id = 9")
    execute(target, "ALTER TABLE catalog.products ADD CONSTRAINT stock_not_negative CHECK (stock >= 0)")


def test_a_dry_run_reports_what_would_be_rejected_and_leaves_nothing_behind(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    _with_bad_rows(legacy, target)
    before = _state(legacy), _state(target)
    result = _dry_run(legacy, target, "--all", "--json", "--chunk-rows", "7")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["scratch_schema"] == "strangler_dryrun_catalog" and report["verified"] is True
    categories, products = report["tables"]
    assert (categories["read"], categories["mapped"], categories["rejected"]) == (1, 1, 0)
    assert (products["read"], products["filtered"], products["mapped"], products["rejected"]) == (40, 2, 36, 2)
    reasons = {tuple(e["key"]): e["reason"] for e in products["examples"]}
    assert "fractions of a cent" in reasons[(7,)], reasons
    assert reasons[(9,)].startswith("the target refuses it:") and "stock_not_negative" in reasons[(9,)], reasons
    assert products["verify"]["ok"] and products["verify"]["matching"] == 36 and products["verify"]["only_in_source"] == 2
    assert products["rate"] > 0 and products["projected_seconds"] is not None
    assert report["projected_wal_bytes"] is not None
    assert (_state(legacy), _state(target)) == before


def test_a_sample_in_memory_only_touches_no_target(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    _with_bad_rows(legacy, target)
    before = _state(target)
    result = _dry_run(legacy, target, "--sample", "8", "--no-write")
    assert result.exit_code == 0, result.output
    assert "rejected public.catalog_product key=[7]:" in result.stdout and "fractions of a cent" in result.stdout
    assert "full snapshot: about" in result.stdout
    report = json.loads(_dry_run(legacy, target, "--sample", "8", "--no-write", "--json").stdout)
    products = report["tables"][1]
    # Ids 1..8: 3 and 4 filtered, 7 rejected by the mapping; the CHECK of the target is not consulted.
    assert (products["read"], products["filtered"], products["mapped"], products["rejected"]) == (8, 2, 5, 1)
    assert report["scratch_schema"] is None and products["verify"] is None
    assert _state(target) == before


def test_a_scratch_copy_that_differs_from_the_sample_fails_the_dry_run(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 5)
    # char(20) pads every title with blanks: the service's store would not hold what the source says.
    execute(target, "ALTER TABLE catalog.products ALTER COLUMN title TYPE char(20)")
    result = _dry_run(legacy, target, "--all", "--json")
    assert result.exit_code == 1
    products = json.loads(result.stdout)["tables"][1]
    assert products["verify"]["ok"] is False and products["verify"]["mismatched"] == 5
    assert products["verify"]["samples"][0]["columns"]["title"]["target"] == "Product 1".ljust(20)
    assert "the scratch copy differs from the mapped source sample" in str(result.exception)


def test_bad_dry_run_options_are_one_line_errors(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    assert str(_dry_run(legacy, target, "--sample", "0").exception) == "--sample 0 must be at least 1 (or use --all)"
    assert str(_dry_run(legacy, target, "--chunk-rows", "0").exception) == "--chunk-rows 0 must be at least 1"
    no_dry = runner.invoke(app, ["cdc", "run", "--spec", str(SYNC_YAML), "--source-url", legacy, "--no-write"])
    assert str(no_dry.exception) == "--all, --no-write and --json are options of the dry-run; add --dry-run"


def _spawn(legacy: str, target: str) -> tuple[subprocess.Popen[str], queue.Queue[str], threading.Thread]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts", "cdc", "run", "--spec", str(SYNC_YAML), "--source-url", legacy,
         "--target-url", target, "--dry-run", "--all", "--chunk-rows", "5"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return proc, lines, reader


def _wait_for(lines: queue.Queue[str], marker: str, seen: list[str], timeout: float = 60.0) -> None:
    def found() -> bool:
        while not lines.empty():
            seen.append(lines.get())
        return any(marker in line for line in seen)

    wait_until(found, timeout, 0.05, what=f"{marker!r} in the dry-run's output")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_dry_run_killed_mid_copy_leaves_nothing_behind(legacy_and_target: tuple[str, str], sig: signal.Signals) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 20_000)
    before = _state(legacy), _state(target)
    proc, lines, reader = _spawn(legacy, target)
    seen: list[str] = []
    try:
        _wait_for(lines, "dry-run: reading public.catalog_product into scratch schema", seen)
        # Mid-copy: the dry-run's transaction on the target has written (the scratch schema, the
        # categories); uncommitted, so no other session sees any of it.
        wait_until(lambda: query(target, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                         "AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()")[0][0] == 1,
                   30, 0.05, what="the dry-run's target transaction")
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        assert proc.stderr is not None
        proc.stderr.close()
    if sig == signal.SIGTERM:
        _wait_for(lines, "nothing left behind", seen)
        assert proc.returncode == 1
        assert any("FAILED: dry-run interrupted; nothing was left behind" in line for line in seen), seen
    # The server ends a killed client's session (and rolls its transaction back) on its own.
    wait_until(lambda: query(target, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND pid <> pg_backend_pid()")[0][0] == 0, 30, 0.05, what="the dry-run's sessions to end")
    assert (_state(legacy), _state(target)) == before
