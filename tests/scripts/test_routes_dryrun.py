"""`strangler routes dry-run` on traffic recorded through a real façade, checked against the façade."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from facade.config import load_config
from facade.dryrun import predict, read_traffic
from facade.routing import RouteTable
from tests.facade.proxy_support import client, echo, facade, get, post, serve, wait_for, write_config

KEY = "k3y-f0r-the-dry-run-tests-0123456789"
ENV = {**os.environ, "STRANGLER_ASSIGNMENT_KEY": KEY}
USERS = 120
COOKIE_SECRET = "s3ss10n-v4lue-n0t-t0-be-st0red"


def _routes(monolith: float, catalog: float) -> str:
    return f"""
    - id: catalog-beta
      match: {{path: "/api/products/**", headers: {{X-Beta: "yes"}}}}
      to: catalog
    - id: catalog-read
      match: {{path: "/api/products/**", methods: [GET]}}
      to: {{monolith: {monolith:g}, catalog: {catalog:g}}}
      sticky: {{header: X-User-Id}}
    """


def _write(path: Path, upstreams: dict[str, str], monolith: float, catalog: float, traffic: Path) -> Path:
    extra = f"assignment: {{key: \"${{STRANGLER_ASSIGNMENT_KEY}}\"}}\ntraffic_record: {{file: \"{traffic}\", sample: 100}}"
    return write_config(path, upstreams, routes=_routes(monolith, catalog), extra=extra)


def _send(base: str) -> dict[str, str]:
    """One request per user (a few with X-Beta, one unmatched): query n → upstream that served."""
    served: dict[str, str] = {}
    with client(base_url=base, timeout=10) as http:
        for n in range(USERS):
            headers = {"X-User-Id": f"user-{n:04d}", "Cookie": f"sessionid={COOKIE_SECRET}-{n}"}
            if n % 20 == 0:
                headers["X-Beta"] = "yes"
            path = "/api/products/7" if n != USERS - 1 else "/orders/1"
            answer = http.get(path, params={"n": str(n)}, headers=headers)
            assert answer.status_code == 200, answer.text
            served[str(n)] = answer.json()["upstream"]
    return served


@pytest.fixture
def recorded(tmp_path: Path) -> Any:
    with serve(echo("monolith")) as monolith, serve(echo("catalog")) as catalog:
        upstreams = {"monolith": monolith, "catalog": catalog}
        traffic = tmp_path / "traffic.jsonl"
        config = _write(tmp_path / "routing.yaml", upstreams, 50, 50, traffic)
        with facade(config, env=ENV) as (base, _app):
            before = _send(base)
            wait_for(lambda: traffic.exists() and len(traffic.read_text().splitlines()) == USERS, what="all requests recorded")
            yield tmp_path, upstreams, traffic, config, base, before


def test_recording_keeps_no_raw_values(recorded: Any) -> None:
    _, _, traffic, _, base, _ = recorded
    counters = wait_for(lambda: (c := get(f"{base}/_strangler/traffic").json())["recorded"] == USERS and c, what="counters")
    assert counters["dropped"] == 0 and counters["failed"] == 0
    text = traffic.read_text()
    for raw in (COOKIE_SECRET, "user-0001", "127.0.0.1", KEY):
        assert raw not in text
    first = json.loads(text.splitlines()[0])
    assert first["route"] == "catalog-beta" and first["headers"]["x-beta"] not in (None, "yes")
    assert set(first["headers"]) == {"x-beta", "x-user-id"}


def test_predictions_equal_the_facades_choices(recorded: Any) -> None:
    tmp_path, upstreams, traffic, config, base, before = recorded
    records = list(read_traffic(traffic))
    old = RouteTable.build(load_config(config, env=ENV), "old")
    assert {r["query"].split("=")[1]: predict(old, r).upstream for r in records} == before
    # The edit, installed in the running façade, then the same requests again.
    _write(config, upstreams, 20, 80, traffic)
    new = RouteTable.build(load_config(config, env=ENV), "new")
    assert post(f"{base}/_strangler/reload").json()["ok"]
    after = _send(base)
    predicted = {r["query"].split("=")[1]: predict(new, r).upstream for r in records}
    assert predicted == after
    assert sum(before[n] != after[n] for n in after) > 0


def test_dry_run_catches_users_moving_back(recorded: Any) -> None:
    tmp_path, upstreams, traffic, config, base, before = recorded
    back = _write(tmp_path / "back.yaml", upstreams, 80, 20, tmp_path / "unused.jsonl")
    command = [sys.executable, "-m", "scripts", "routes", "dry-run", str(back), "--traffic", str(traffic), "--against", str(config)]
    done = subprocess.run([*command, "--format", "json"], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    # Users on catalog-read whose bucket lies in [5000, 8000) go from catalog back to the monolith.
    old = RouteTable.build(load_config(config, env=ENV), "old").by_id["catalog-read"]
    expected = sum(1 for n in range(USERS - 1) if n % 20 and 5000 <= old.bucket(f"user-{n:04d}") < 8000)
    assert report["users_back"] == expected > 0
    assert report["users_forward"] == 0
    assert report["never_hit"] == []
    assert report["unhealthy"] == {}
    text = subprocess.run([*command, "--allow-back"], env=ENV, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert f"moving back: {expected}" in text.stdout


def test_dry_run_fails_on_an_unhealthy_upstream(recorded: Any) -> None:
    tmp_path, upstreams, traffic, config, base, before = recorded
    dead = {**upstreams, "catalog": "http://127.0.0.1:9"}
    forward = _write(tmp_path / "forward.yaml", dead, 20, 80, tmp_path / "unused.jsonl")
    done = subprocess.run(
        [sys.executable, "-m", "scripts", "routes", "dry-run", str(forward), "--traffic", str(traffic), "--against", str(config)],
        env=ENV, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "upstream catalog is unhealthy" in done.stdout
    assert "moving back: 0" in done.stdout


def test_a_broken_traffic_file_is_one_failed_line(tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.jsonl"
    traffic.write_text('{not json\n')
    config = _write(tmp_path / "routing.yaml", {"monolith": "http://127.0.0.1:9", "catalog": "http://127.0.0.1:9"}, 50, 50, traffic)
    done = subprocess.run(
        [sys.executable, "-m", "scripts", "routes", "dry-run", str(config), "--traffic", str(traffic), "--against", str(config), "--no-health"],
        env=ENV, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"FAILED: {traffic}:1:2: not a JSON record")
