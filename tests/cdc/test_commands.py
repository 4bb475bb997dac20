"""The cdc commands on bad input, run as an operator runs them: one line, a non-zero exit, no
traceback, and nothing left behind on the source by a run that failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from common.postgres import free_port
from tests.cdc.apply_fixtures import ROOT, SYNC_YAML, execute, legacy_and_target, query, seed, spec_for

__all__ = ["legacy_and_target"]


def _strangler(*args: str) -> tuple[int, str]:
    """Exit status and the complaint of `strangler ARGS` (stdout and stderr together)."""
    proc = subprocess.run([sys.executable, "-m", "scripts", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc.returncode, proc.stdout + proc.stderr


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    return lines[0]


def _unreachable() -> str:
    return f"postgresql://strangler@127.0.0.1:{free_port('127.0.0.1')}/legacy"


def test_drop_with_an_unreachable_database_is_one_failed_line() -> None:
    url = _unreachable()
    code, output = _strangler("cdc", "drop", "--spec", str(SYNC_YAML), "--source-url", url)
    line = _one_line(output)
    assert code == 1
    assert line.startswith("FAILED: cannot connect to the source database postgresql://strangler@127.0.0.1:"), line


def test_run_with_a_source_url_that_is_not_postgresql_is_refused(legacy_and_target: tuple[str, str]) -> None:
    _, target = legacy_and_target
    code, output = _strangler("cdc", "run", "--once", "--spec", str(SYNC_YAML), "--target-url", target,
                              "--source-url", "mysql://shop:secret@127.0.0.1:3306/shop")
    line = _one_line(output)
    assert code == 1
    assert line.startswith("FAILED: the source database URL 'mysql://shop:***@127.0.0.1:3306/shop' is not PostgreSQL"), line
    assert "give postgresql://" in line and "secret" not in line


def test_a_missing_spec_file_is_named_with_a_position(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "sync.yaml"
    code, output = _strangler("cdc", "run", "--spec", str(missing))
    line = _one_line(output)
    assert code == 1
    assert line == f"FAILED: {missing}:1:1: cannot read the file: No such file or directory.", line


def _publications(url: str, name: str) -> int:
    return int(query(url, "SELECT count(*) FROM pg_publication WHERE pubname = %s", (name,))[0][0])


def _slots(url: str, name: str) -> int:
    return int(query(url, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (name,))[0][0])


def _failing_first_run(legacy: str, target: str) -> str:
    """`cdc run --once` into a store whose products table is missing; returns the complaint."""
    seed(legacy, 20)
    execute(target, "DROP TABLE catalog.products")
    code, output = _strangler("cdc", "run", "--once", "--spec", str(SYNC_YAML), "--source-url", legacy,
                              "--target-url", target)
    assert code == 1
    return _one_line(output)


def test_a_failed_first_run_removes_the_publication_and_slot_it_made(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    spec = spec_for(legacy, target)
    line = _failing_first_run(legacy, target)
    assert line.startswith("FAILED: ") and "catalog.products" in line, line
    assert _publications(legacy, spec.publication_name) == 0
    assert _slots(legacy, spec.slot_name) == 0


def test_a_failed_first_run_keeps_a_publication_that_was_there_before(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    spec = spec_for(legacy, target)
    execute(legacy, f"CREATE PUBLICATION {spec.publication_name} FOR TABLE catalog_product")
    _failing_first_run(legacy, target)
    assert _publications(legacy, spec.publication_name) == 1
    assert _slots(legacy, spec.slot_name) == 0
