"""`python -m extracted.catalog migrate --sql | --check`: offline SQL and the migration check.

Every revision in the repository is covered by iterating over the history, so a new migration
is checked by these tests without editing them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from sqlalchemy import BigInteger, Column, Integer, MetaData, Table
from typer.testing import CliRunner

from alembic.script import Script
from common.postgres import EmbeddedPostgres, free_port
from common.waiting import wait_until
from extracted.catalog.__main__ import cli
from extracted.catalog.db import make_engine
from extracted.catalog.migrate import (
    SCRATCH_PREFIX, VERSION_TABLE, check_migrations, head_revision, migrate, migration_history,
)
from extracted.catalog.models import Base
from extracted.catalog.schema_snapshot import compare, take_snapshot

MIGRATIONS = Path(__file__).resolve().parents[2] / "extracted" / "catalog" / "migrations"
HISTORY = migration_history()
REPO_ROOT = Path(__file__).resolve().parents[2]


def _down(rev: Script) -> str:
    return str(rev.down_revision or "base")


def _schema(url: str, *, leave_out: tuple[str, ...] = ()) -> dict[str, str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return take_snapshot(conn, leave_out=leave_out)
    finally:
        engine.dispose()


def _execute_script(url: str, script: str) -> None:
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True  # the script brings its own BEGIN/COMMIT
        with conn.cursor() as cur:
            cur.execute(script)
    finally:
        conn.close()


def _scratch_databases(pg: EmbeddedPostgres) -> set[str]:
    conn = psycopg2.connect(pg.url())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (SCRATCH_PREFIX,))
            return {name for (name,) in cur.fetchall()}
    finally:
        conn.close()


def _candidate(tmp_path: Path, upgrade: str, downgrade: str, *, name: str = "candidate") -> Path:
    """A copy of the repository's migrations with one more revision on top of head."""
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory, ignore=shutil.ignore_patterns("__pycache__"))
    (directory / "versions" / f"9000_{name}.py").write_text(
        f'"""A candidate revision."""\n\n'
        f"import os\nimport signal\nfrom pathlib import Path\n\nimport sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "9000"\ndown_revision = "{head_revision()}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        f"def upgrade():\n{upgrade}\n\n\ndef downgrade():\n{downgrade}\n"
    )
    return directory


# -- --sql --------------------------------------------------------------------------------------


@pytest.fixture
def unreachable_url() -> str:
    """A PostgreSQL URL on a loopback port nobody listens on."""
    return f"postgresql://postgres@127.0.0.1:{free_port()}/catalog"


@pytest.mark.parametrize("rev", HISTORY, ids=[rev.revision for rev in HISTORY])
def test_sql_prints_each_revision_up_and_down_without_a_database(rev: Script, unreachable_url: str) -> None:
    runner = CliRunner()
    up = runner.invoke(cli, ["migrate", "--sql", "--from", _down(rev), "--to", rev.revision,
                             "--database-url", unreachable_url])
    assert up.exit_code == 0, up.output
    assert f"-- Running upgrade {rev.down_revision or ''} -> {rev.revision}" in up.stdout
    assert f"'{rev.revision}'" in up.stdout.split(f"-> {rev.revision}")[1]  # the version table follows
    assert up.stdout.rstrip().endswith("COMMIT;")

    down = runner.invoke(cli, ["migrate", "--sql", "--from", rev.revision, "--to", _down(rev),
                               "--database-url", unreachable_url])
    assert down.exit_code == 0, down.output
    assert f"-- Running downgrade {rev.revision} -> {rev.down_revision or ''}" in down.stdout
    assert "Running upgrade" not in down.stdout


def test_sql_script_builds_the_schema_the_online_migration_builds(pg: EmbeddedPostgres) -> None:
    online = pg.create_database("sql_online")
    offline = pg.create_database("sql_offline")
    migrate(online)
    result = CliRunner().invoke(cli, ["migrate", "--sql"])
    assert result.exit_code == 0, result.output
    _execute_script(offline, result.stdout)
    assert compare(_schema(online), _schema(offline)) == []

    empty = _schema(pg.create_database("sql_empty"))
    result = CliRunner().invoke(cli, ["migrate", "--sql", "--from", "head", "--to", "base"])
    assert result.exit_code == 0, result.output
    _execute_script(offline, result.stdout)
    left = _schema(offline, leave_out=(VERSION_TABLE,))
    assert [str(d) for d in compare(empty, left)] == ["schema catalog is left behind"]


def test_sql_of_a_revision_that_reads_the_database_says_it_runs_online_only(tmp_path: Path) -> None:
    candidate = _candidate(tmp_path, '    op.get_bind().execute(sa.text("SELECT 1")).scalar_one()', "    pass")
    result = CliRunner().invoke(cli, ["migrate", "--sql", "--migrations", str(candidate)])
    assert result.exit_code == 1
    assert result.output.startswith("FAILED: cannot write the SQL of base:9000 offline: ")
    assert result.output.strip().endswith("a revision that reads the database (op.get_bind()) can only run online")
    assert len(result.output.strip().splitlines()) == 1


def test_sql_names_the_revisions_it_knows(unreachable_url: str) -> None:
    result = CliRunner().invoke(cli, ["migrate", "--sql", "--from", "0x7", "--database-url", unreachable_url])
    assert result.exit_code == 1
    known = ", ".join(["base", *(rev.revision for rev in HISTORY), "head"])
    assert result.output.strip().endswith(f"pass one of {known} (or a unique prefix)")
    assert result.output.startswith("FAILED: no revision '0x7' in ")
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sql", "--check"], "FAILED: --sql and --check are two separate runs; pass one of them"),
        (["--from", "0001"], "FAILED: --from 0001 goes with --sql"),
        (["--check", "--to", "0001"], "FAILED: --to 0001 does not go with --check"),
        (["--sql", "--json"], "FAILED: --json goes with --check"),
        (["--sql", "--migrations", "/"], "FAILED: / is not an Alembic migrations directory (no env.py in it)"),
    ],
)
def test_options_that_do_not_go_together_are_refused(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["migrate", *args])
    assert result.exit_code == 1
    assert result.output.startswith(message)


# -- --check ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_check(pg: EmbeddedPostgres) -> dict[str, Any]:
    """`migrate --check --json` of the repository's own migrations, on the session cluster."""
    before = _scratch_databases(pg)
    result = CliRunner().invoke(cli, ["migrate", "--check", "--json", "--database-url", pg.url()])
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    assert _scratch_databases(pg) == before  # dropped at the end
    return report


@pytest.mark.parametrize("rev", HISTORY, ids=[rev.revision for rev in HISTORY])
def test_check_passes_every_revision_up_down_and_up_again(rev: Script, repo_check: dict[str, Any]) -> None:
    stages = {stage["name"]: stage for stage in repo_check["stages"]}
    up, down = f"upgrade {_down(rev)} → {rev.revision}", f"downgrade {rev.revision} → {_down(rev)}"
    assert stages[up]["ok"] is True, stages[up]
    assert stages[down] == {**stages[down], "ok": True, "detail": f"schema equals {_down(rev)}'s"}
    assert stages[f"{up} again"]["detail"] == "schema equals the first upgrade's"
    assert stages[f"{up} again"]["ok"] is True


def test_check_runs_the_stages_in_order_and_alembic_check_last(repo_check: dict[str, Any]) -> None:
    names = [stage["name"] for stage in repo_check["stages"]]
    revs = [rev.revision for rev in HISTORY]
    assert names == (
        [f"upgrade {_down(rev)} → {rev.revision}" for rev in HISTORY]
        + [f"downgrade {rev.revision} → {_down(rev)}" for rev in reversed(HISTORY)]
        + [f"upgrade {_down(rev)} → {rev.revision} again" for rev in HISTORY]
        + ["models match migrations (alembic check)"]
    )
    assert revs[-1] == head_revision()
    assert repo_check["ok"] is True
    assert repo_check["stages"][-1]["detail"] == "no differences"
    assert repo_check["database"].startswith(SCRATCH_PREFIX)


def test_check_fails_on_a_downgrade_that_leaves_an_index_behind(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    candidate = _candidate(
        tmp_path,
        '    op.add_column("products", sa.Column("weight_grams", sa.Integer()), schema="catalog")\n'
        '    op.create_index("ix_catalog_products_slug", "products", ["slug"], schema="catalog")',
        '    op.drop_column("products", "weight_grams", schema="catalog")',
        name="weight",
    )
    before = _scratch_databases(pg)
    result = CliRunner().invoke(cli, ["migrate", "--check", "--database-url", pg.url(), "--migrations", str(candidate)])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert f"✓ upgrade {head_revision()} → 9000: 2 schema objects changed" in lines
    failed = [line for line in lines if line.startswith("✗")]
    assert failed == [
        f"✗ downgrade 9000 → {head_revision()}: the schema is not the one {head_revision()} had: "
        "index catalog.ix_catalog_products_slug is left behind; fix downgrade() in 9000_weight.py"
    ]
    # Nothing runs on a database in an unknown state; the rest is reported as skipped.
    after = lines[lines.index(failed[0]) + 1:]
    assert after and all(line.startswith("· ") and line.endswith(": skipped: an earlier stage failed") for line in after)
    assert result.stderr.startswith(f"FAILED: downgrade 9000 → {head_revision()}: the schema is not the one")
    assert _scratch_databases(pg) == before


def test_check_fails_on_a_downgrade_that_raises(pg: EmbeddedPostgres, tmp_path: Path) -> None:
    candidate = _candidate(
        tmp_path,
        '    op.create_index("ix_catalog_products_slug", "products", ["slug"], schema="catalog")',
        '    op.drop_index("ix_catalog_products_slugs", table_name="products", schema="catalog")',
    )
    result = CliRunner().invoke(cli, ["migrate", "--check", "--json", "--database-url", pg.url(),
                                      "--migrations", str(candidate)])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    failed = [stage for stage in report["stages"] if stage["ok"] is False]
    assert [stage["name"] for stage in failed] == [f"downgrade 9000 → {head_revision()}"]
    assert failed[0]["detail"] == (
        'downgrade() of 9000_candidate.py failed: index "ix_catalog_products_slugs" does not exist'
    )


def _changed_models(change: str) -> MetaData:
    changed = MetaData(schema="catalog")
    for table in Base.metadata.tables.values():
        table.to_metadata(changed)
    products = changed.tables["catalog.products"]
    if change == "new column":
        products.append_column(Column("weight_grams", Integer, nullable=True))
    else:
        products.c.stock.type = BigInteger()
        Table("tags", changed, Column("id", Integer, primary_key=True), schema="catalog")
    return changed


@pytest.mark.parametrize(
    ("change", "found"),
    [
        ("new column", "add_column catalog.products.weight_grams"),
        ("new type and table", "add_table catalog.tags; modify_type catalog.products.stock (INTEGER → BIGINT)"),
    ],
)
def test_check_fails_on_a_model_change_without_a_migration(pg: EmbeddedPostgres, change: str, found: str) -> None:
    report = check_migrations(pg.url(), metadata=_changed_models(change))
    assert not report.ok
    assert [stage.name for stage in report.failures] == ["models match migrations (alembic check)"]
    assert report.failures[0].detail == (
        f"the models differ from the migrations at head: {found}; add a revision (alembic -c "
        "extracted/catalog/alembic.ini -x url=... revision --autogenerate -m '...') or change the models back"
    )
    assert all(stage.ok for stage in report.stages[:-1])


def test_check_on_a_private_postgres_leaves_nothing_behind() -> None:
    # Not under pytest's tmp_path: pytest closes /tmp/pytest-of-<user> to others at every session
    # start, and the cluster may run as an unprivileged user who must reach its data directory.
    tmpdir = Path(tempfile.mkdtemp(prefix="strangler-test-migrate-check-"))
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    env.pop("STRANGLER_CATALOG_DATABASE_URL", None)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "extracted.catalog", "migrate", "--check"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1].startswith("migrations OK: ")
        assert "(a private embedded PostgreSQL), dropped" in result.stdout
        assert list(tmpdir.iterdir()) == []  # its data directory is gone with it
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_an_interrupted_check_drops_the_scratch_database(pg: EmbeddedPostgres, tmp_path: Path, signum: int) -> None:
    reached = tmp_path / "reached"
    candidate = _candidate(
        tmp_path,
        # A long migration: it says it has started, then waits for a signal.
        f'    Path({str(reached)!r}).write_text(str(os.getpid()))\n    signal.pause()',
        "    pass",
    )
    before = _scratch_databases(pg)
    process = subprocess.Popen(
        [sys.executable, "-m", "extracted.catalog", "migrate", "--check", "--database-url", pg.url(),
         "--migrations", str(candidate)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until(reached.exists, 60, what="the candidate revision to start")
        assert len(_scratch_databases(pg) - before) == 1
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stdout + stderr
    assert stderr.strip().splitlines()[-1] == "FAILED: interrupted; the scratch database was dropped"
    assert "Traceback" not in stderr
    assert _scratch_databases(pg) == before
