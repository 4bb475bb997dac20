"""`strangler facade serve --workers N`: a real multi-process façade."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.postgres import free_port
from tests.support import serve, wait_for


def named(name: str) -> Starlette:
    async def answer(request: Request) -> JSONResponse:
        return JSONResponse({"upstream": name})

    return Starlette(routes=[Route("/{path:path}", answer)])


def write_routing(path: Path, monolith: str, catalog: str, *, to: str) -> None:
    path.write_text(
        f"""version: 1
upstreams:
  monolith: {{url: "{monolith}"}}
  catalog: {{url: "{catalog}"}}
routes:
  - id: products
    match: {{path: /api/products/**}}
    to: {to}
default: {{to: monolith}}
"""
    )


def worker_pids(parent: int) -> set[int]:
    """The parent's child processes that are façade workers (not multiprocessing's helpers)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return {int(pid) for pid in children if "multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")}


def upstreams_seen(url: str, n: int) -> set[str]:
    # A new connection each time, so the kernel spreads them over the workers.
    return {httpx.get(f"{url}/api/products/1", timeout=5, headers={"connection": "close"}).json()["upstream"] for _ in range(n)}


def test_sighup_reloads_every_worker_in_place(tmp_path: Path) -> None:
    with serve(named("monolith")) as monolith, serve(named("catalog")) as catalog:
        path = tmp_path / "routing.yaml"
        write_routing(path, monolith, catalog, to="monolith")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = tmp_path / "facade.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "scripts", "facade", "serve", "--config", str(path), "--port", str(port),
                 "--workers", "2", "--no-watch", "--no-access-log"],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        try:
            def ready() -> set[int] | None:
                assert process.poll() is None, log_path.read_text()
                try:
                    httpx.get(f"{url}/_strangler/health", timeout=2).raise_for_status()
                except httpx.HTTPError:
                    return None
                pids = worker_pids(process.pid)
                return pids if len(pids) == 2 else None

            before = wait_for(ready, timeout=60, what="two façade workers")
            assert upstreams_seen(url, 20) == {"monolith"}
            write_routing(path, monolith, catalog, to="catalog")
            os.kill(process.pid, signal.SIGHUP)
            wait_for(lambda: upstreams_seen(url, 20) == {"catalog"}, timeout=30, what="every worker on the new table")
            assert worker_pids(process.pid) == before  # reloaded in place, not restarted
            # POST /_strangler/reload reaches one worker, which has the supervisor tell them all.
            write_routing(path, monolith, catalog, to="monolith")
            assert httpx.post(f"{url}/_strangler/reload", timeout=10).json()["ok"] is True
            wait_for(lambda: upstreams_seen(url, 20) == {"monolith"}, timeout=30, what="every worker reloaded by the API")
            assert worker_pids(process.pid) == before
            # A broken file: every worker keeps its last good table.
            path.write_text("version: 1\nupstreams: {monolith: {url: nowhere}\n")
            os.kill(process.pid, signal.SIGHUP)
            wait_for(lambda: log_path.read_text().count("rejected; still serving version") == 2, timeout=30, what="both workers' reload problem in the log")
            assert f"{path}:3:1: this is not valid YAML" in log_path.read_text()
            assert upstreams_seen(url, 20) == {"monolith"}
        finally:
            process.terminate()
            process.wait(timeout=20)
        assert process.returncode == 0, log_path.read_text()


def test_a_bad_port_or_log_level_is_one_line_before_anything_listens(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    write_routing(path, "http://127.0.0.1:9", "http://127.0.0.1:9", to="monolith")
    for option, value, expected in (
        ("--port", "99999", "FAILED: --port 99999 is not a TCP port; give one from 1 to 65535"),
        ("--port", "0", "FAILED: --port 0 is not a TCP port; give one from 1 to 65535"),
        ("--log-level", "bogus", "FAILED: --log-level 'bogus' is not a log level; use one of: critical, error, warning, info, debug, trace"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "scripts", "facade", "serve", "--config", str(path), option, value],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip() == expected
        assert done.stdout == ""
