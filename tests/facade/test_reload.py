"""Live reload: under load, with invalid files, with requests in flight; and refusing a bad start."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.facade.proxy_support import client, get, post, echo, facade, read_body, serve, wait_for, write_config

SPLIT = """
- id: catalog-read
  match: {{path: /api/products/**, methods: [GET, HEAD]}}
  to: {{monolith: {monolith}, catalog: {catalog}}}
  sticky: {{header: X-User}}
"""


def test_reload_under_concurrent_load_fails_no_request(tmp_path: Path) -> None:
    with serve(echo("monolith")) as monolith, serve(echo("catalog")) as catalog, serve(echo("catalog-v2")) as catalog_v2:
        path = tmp_path / "routing.yaml"
        write_config(path, {"monolith": monolith, "catalog": catalog}, routes=SPLIT.format(monolith=100, catalog=0))
        with facade(path) as (url, app):
            stop = threading.Event()
            reloads = {"written": 0}

            def rewrite() -> None:
                step = 0
                while not stop.is_set():
                    step += 1
                    weight = (step * 10) % 110
                    # Alternate the catalog URL too, so upstream pools are replaced while in use.
                    write_config(
                        path, {"monolith": monolith, "catalog": catalog if step % 2 else catalog_v2},
                        routes=SPLIT.format(monolith=100 - weight, catalog=weight),
                    )
                    reloads["written"] += 1
                    if step % 3 == 0:
                        post(url + "/_strangler/reload", timeout=10)
                    stop.wait(0.05)

            def load(number: int) -> list[int]:
                statuses = []
                with client(base_url=url, timeout=10) as session:
                    for i in range(250):
                        response = session.get(f"/api/products/{i}", headers={"X-User": f"user-{number}-{i % 7}"})
                        statuses.append(response.status_code)
                return statuses

            writer = threading.Thread(target=rewrite)
            writer.start()
            try:
                with ThreadPoolExecutor(8) as pool:
                    results = [status for statuses in pool.map(load, range(8)) for status in statuses]
            finally:
                stop.set()
                writer.join()
            routes = get(url + "/_strangler/routes").json()
    assert len(results) == 2000
    assert results.count(200) == 2000
    assert reloads["written"] > 3
    assert app.reloader.reloads >= 3
    assert routes["last_error"] is None


def test_an_invalid_file_at_reload_keeps_the_last_good_table_serving(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="strangler.facade")
    with serve(echo("monolith")) as monolith:
        path = tmp_path / "routing.yaml"
        write_config(path, {"monolith": monolith})
        with facade(path) as (url, _):
            good = get(url + "/_strangler/routes").json()
            path.write_text(path.read_text().replace("default: {to: monolith", "default: {to: monolit"))
            broken = wait_for(
                lambda: (body := get(url + "/_strangler/routes").json())["last_error"] and body,
                what="the reload error to show",
            )
            still = get(url + "/anything")
            api = post(url + "/_strangler/reload")
            metrics = get(url + "/_strangler/metrics").text
            write_config(path, {"monolith": monolith}, default_timeout="9s")
            fixed = wait_for(
                lambda: (body := get(url + "/_strangler/routes").json())["version"] != good["version"] and body,
                what="the fixed file to load",
            )
    assert broken["version"] == good["version"]
    (problem,) = broken["last_error"]["problems"]
    assert problem.startswith(f"{path}:") and "'monolit'" in problem
    line, column = problem.removeprefix(f"{path}:").split(":")[:2]
    assert int(line) > 1 and int(column) > 1
    assert broken["last_error"]["errors"][0]["line"] == int(line)
    assert still.status_code == 200
    assert api.status_code == 422 and api.json()["problems"] == [problem]
    assert api.json()["error"] == "invalid_config" and api.json()["request_id"] == api.headers["x-request-id"]
    assert f"still serving version {good['version']}" in api.json()["detail"]
    assert 'strangler_reloads_total{result="error"}' in metrics
    assert fixed["last_error"] is None and fixed["table"]["default"]["timeout"] == 9.0
    # The operator reading the log sees where the file is wrong and which version keeps serving.
    rejected = [record.getMessage() for record in caplog.records if record.name == "strangler.facade" and record.levelno == logging.ERROR]
    for trigger in ("file change", "api"):
        assert any(
            message.startswith(f"reload ({trigger}) of {path} rejected; still serving version {good['version']}:")
            and problem in message.splitlines()
            for message in rejected
        ), (trigger, rejected)


def test_requests_in_flight_finish_on_the_table_they_started_with(tmp_path: Path) -> None:
    release = threading.Event()
    entered = threading.Event()

    async def old(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        entered.set()
        await asyncio.to_thread(release.wait, 10)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"old"})

    with serve(old) as old_url, serve(echo("new")) as new_url:
        path = tmp_path / "routing.yaml"
        write_config(path, {"monolith": old_url})
        with facade(path, watch=False) as (url, app):
            result: dict[str, httpx.Response] = {}
            thread = threading.Thread(target=lambda: result.setdefault("held", get(url + "/held", timeout=15)))
            thread.start()
            try:
                wait_for(entered.is_set, what="the held request to reach the old upstream")
                old_upstream = app.proxy.generation.upstreams["monolith"]
                write_config(path, {"monolith": new_url})
                assert post(url + "/_strangler/reload").json()["ok"]
                fresh = get(url + "/fresh")
                assert old_upstream.retired and old_upstream.handle is not None  # still in use
            finally:
                release.set()
                thread.join()
            wait_for(lambda: old_upstream.handle is None, what="the old upstream's pool to close")
    assert result["held"].status_code == 200 and result["held"].text == "old"
    assert fresh.json()["upstream"] == "new"


def test_an_invalid_file_at_startup_is_refused_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text("version: 1\nupstreams:\n  monolith: {url: \"http://127.0.0.1:1\"}\ndefault: {to: monolit}\n")
    finished = subprocess.run(
        [sys.executable, "-m", "scripts", "facade", "serve", "--config", str(path), "--port", "1"],
        capture_output=True, text=True, timeout=60,
    )
    assert finished.returncode == 1
    assert f"{path}:4:15:" in finished.stderr and "'monolit'" in finished.stderr


def test_sighup_reloads_the_file(tmp_path: Path) -> None:
    import os
    import signal

    from tests.support import free_port

    with serve(echo("monolith")) as monolith, serve(echo("catalog")) as catalog:
        path = tmp_path / "routing.yaml"
        write_config(path, {"monolith": monolith})
        port = free_port()
        log_path = tmp_path / "facade.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "scripts", "facade", "serve", "--config", str(path), "--port", str(port), "--no-watch", "--no-access-log"],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            with client(base_url=url, timeout=5) as session:

                def routes() -> dict[str, Any] | None:
                    assert process.poll() is None, log_path.read_text()
                    try:
                        return session.get("/_strangler/routes").json()  # type: ignore[no-any-return]
                    except httpx.HTTPError:
                        return None

                before = wait_for(routes, timeout=30, what="the façade process")
                write_config(path, {"monolith": catalog})
                assert session.get("/x").json()["upstream"] == "monolith"  # not watching the file
                os.kill(process.pid, signal.SIGHUP)
                after = wait_for(lambda: (body := routes()) and body["version"] != before["version"] and body, what="the SIGHUP reload")
                answer = session.get("/x").json()
        finally:
            process.terminate()
            process.wait(timeout=15)
    assert after["last_error"] is None and after["last_reload"]["ok"]
    assert answer["upstream"] == "catalog"
