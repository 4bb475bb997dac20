"""`strangler shadow report|replay` through the real command: read-only commands never write, and
they read the store the façade writes, wherever they are run from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

from facade.shadow import ReportError, ShadowStore
from scripts import cli
from scripts.facade_cmd import ADDONS
from tests.facade.proxy_support import facade, write_config
from tests.facade.shadow.test_report import seed
from tests.support import serve, wait_for

REPO = Path(__file__).resolve().parents[2]


def strangler(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """The real command line, as an operator runs it (from `cwd`)."""
    return subprocess.run(
        [sys.executable, "-m", "scripts", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FAILED: "), result.stderr
    return lines[0]


def test_report_on_a_store_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "shadow.db"
    line = one_line_failure(strangler("shadow", "report", "--store", f"sqlite:///{missing}"))
    assert f"there is no shadow store at '{missing}'" in line and "--store" in line
    assert not (tmp_path / "no").exists()


def test_report_leaves_the_store_it_reads_unchanged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shadow.db"
    seed(url)
    database = tmp_path / "shadow.db"
    before = database.read_bytes()
    result = strangler("shadow", "report", "--store", url, "--format", "json")
    assert result.returncode == 0, result.stderr
    # The database file as it was (a WAL reader may add SQLite's -shm index beside it, as the
    # façade's own readers do; nothing in the database changes).
    assert database.read_bytes() == before


def product(request: Request) -> JSONResponse:
    return JSONResponse({"id": request.path_params["id"], "name": "lamp"})


def test_report_with_a_config_from_another_directory_reads_the_store_the_facade_writes(tmp_path: Path) -> None:
    live, elsewhere = tmp_path / "live", tmp_path / "elsewhere"
    elsewhere.mkdir()
    app = Starlette(routes=[Route("/api/products/{id}", product)])
    with serve(app) as monolith, serve(app) as catalog:
        live.mkdir()
        config = live / "routing.yaml"
        # The store path is relative: the façade takes it from the file's directory, not from its own.
        write_config(
            config, {"monolith": monolith, "catalog": catalog},
            routes="- id: catalog-read\n  match: {path: /api/products/**}\n  to: {monolith: 100}\n  shadow: {to: catalog, sample: 100}",
            extra='shadow_store: {url: "sqlite:///.strangler/shadow.db"}\nshadow_worker: {cpu: 100}',
        )
        store = live / ".strangler" / "shadow.db"
        with facade(config, addon_factories=ADDONS) as (url, _):
            for i in range(12):
                assert httpx.get(f"{url}/api/products/{i}", timeout=10).status_code == 200

            def stored() -> bool:
                result = strangler("shadow", "report", "--config", "../live/routing.yaml", "--format", "json", cwd=elsewhere)
                return result.returncode == 0 and '"compared": 12' in result.stdout

            wait_for(stored, timeout=60, interval=0.5, what="12 comparisons reported from another directory")
    assert store.is_file()
    assert not (elsewhere / ".strangler").exists() and not (REPO / "live").exists()


@pytest.mark.parametrize("args", [(), ("--format", "json"), ("--format", "html", "-o", "{tmp}/report.html"), ("--fail-over", "5%")])
def test_an_empty_store_or_an_unknown_route_is_the_same_clear_failure_everywhere(tmp_path: Path, args: tuple[str, ...]) -> None:
    empty, full = f"sqlite:///{tmp_path}/empty.db", f"sqlite:///{tmp_path}/full.db"
    ShadowStore(empty).create()
    seed(full)
    runner = CliRunner()
    options = [a.format(tmp=tmp_path) for a in args]
    for store, route, expected in (
        (empty, (), "holds no comparisons yet"),
        (full, ("--route", "catalog-raed"), "route 'catalog-raed' has no comparisons in the shadow store; routes with comparisons: catalog-read"),
    ):
        result = runner.invoke(cli.app, ["shadow", "report", "--store", store, *route, *options])
        assert isinstance(result.exception, ReportError), result.output
        assert expected in str(result.exception)
    assert not (tmp_path / "report.html").exists()
    # The real command: exit 1, one line, nothing on standard output.
    failed = strangler("shadow", "report", "--store", empty, *options)
    assert "holds no comparisons yet" in one_line_failure(failed) and failed.stdout == ""


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--rate", "-5", "--rate -5 is not a positive number of requests per second"),
    ("--rate", "0", "--rate 0 is not a positive number of requests per second"),
    ("--concurrency", "0", "--concurrency 0 must be at least 1"),
    ("--timeout", "-1", "--timeout -1 must be a positive number of seconds"),
])
def test_replay_refuses_options_that_mean_nothing(tmp_path: Path, option: str, value: str, says: str) -> None:
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text("")
    store = tmp_path / "s" / "shadow.db"
    line = one_line_failure(strangler(
        "shadow", "replay", "--traffic", str(traffic), "--against", "http://127.0.0.1:9", "--store", f"sqlite:///{store}", option, value
    ))
    assert says in line
    assert not store.parent.exists()  # refused before anything was opened
