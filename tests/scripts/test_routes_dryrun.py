"""`strangler routes dry-run` on traffic recorded through a real façade, checked against the façade."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from facade.config import load_config
from facade.dryrun import DryRunError, predict, read_traffic
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


# --------------------------------------------------------------------------------------------
# The mismatch prediction from the shadow history


def _service(name: str, *, candidate: bool) -> Any:
    """A JSON product service; as the candidate it differs on every third product and on every review."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        parts = scope["path"].strip("/").split("/")
        number = int(parts[2])
        body: dict[str, Any] = {"id": number, "price": "9.99", "reviews" if len(parts) > 3 else "name": f"Product {number}"}
        if candidate and (len(parts) > 3 or number % 3 == 0):
            body["price"] = "10.99"
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), (b"x-upstream", name.encode())]})
        await send({"type": "http.response.body", "body": payload})

    return app


def _shadowed_routes(catalog: float, traffic: Path, *, store: str = "shadow.db") -> tuple[str, str]:
    routes = f"""
    - id: catalog-read
      match: {{path: "/api/products/**", methods: [GET]}}
      to: {{monolith: {100 - catalog:g}, catalog: {catalog:g}}}
      sticky: {{header: X-User-Id}}
      shadow: {{to: catalog, sample: 100, noise_sample: 0}}
    """
    # A relative store path: the façade and the dry-run both take it from the routing file's directory.
    extra = (
        f"assignment: {{key: \"${{STRANGLER_ASSIGNMENT_KEY}}\"}}\ntraffic_record: {{file: \"{traffic}\", sample: 100}}\n"
        f"shadow_store: {{url: \"sqlite:///{store}\"}}\nshadow_worker: {{cpu: 100}}"
    )
    return routes, extra


def _user_path(n: int) -> str:
    return f"/api/products/{n}/reviews" if n % 4 == 0 else f"/api/products/{n}"


@pytest.fixture
def shadowed(tmp_path: Path) -> Any:
    """Traffic recorded through a shadowing façade (everything on the monolith, mirrored to catalog)."""
    from facade.shadow import ShadowStore
    from scripts.facade_cmd import ADDONS

    with serve(_service("monolith", candidate=False)) as monolith, serve(_service("catalog", candidate=True)) as catalog:
        upstreams = {"monolith": monolith, "catalog": catalog}
        traffic = tmp_path / "traffic.jsonl"
        routes, extra = _shadowed_routes(0, traffic)
        config = write_config(tmp_path / "routing.yaml", upstreams, routes=routes, extra=extra)
        with facade(config, env=ENV, addon_factories=ADDONS) as (base, _app), client(base_url=base, timeout=10) as http:
            for n in range(USERS):
                answer = http.get(_user_path(n), headers={"X-User-Id": f"user-{n:04d}"})
                assert answer.status_code == 200 and answer.headers["x-upstream"] == "monolith", answer.text
            wait_for(lambda: (tmp_path / "shadow.db").is_file(), timeout=30, what="the shadow store beside routing.yaml")
            store = ShadowStore(f"sqlite:///{tmp_path}/shadow.db", read_only=True)
            try:
                rows = wait_for(lambda: len(r := _stored(store)) == USERS and r, timeout=30, what="every request compared and stored")
            finally:
                store.close()
            wait_for(lambda: traffic.exists() and len(traffic.read_text().splitlines()) == USERS, what="all requests recorded")
        yield tmp_path, upstreams, traffic, config, rows


def _stored(store: Any) -> list[dict[str, Any]]:
    try:
        return store.load(route="catalog-read").comparisons
    except Exception:  # noqa: BLE001 - the file and tables appear with the first write
        return []


def _mismatch(row: dict[str, Any]) -> bool:
    return row["outcome"] != "compared" or not row["match_denoised"]


def test_dry_run_predicts_the_mismatches_of_the_moving_requests(shadowed: Any) -> None:
    tmp_path, upstreams, traffic, config, rows = shadowed
    routes, extra = _shadowed_routes(30, tmp_path / "unused.jsonl")
    edit = write_config(tmp_path / "edit.yaml", upstreams, routes=routes, extra=extra)
    command = [sys.executable, "-m", "scripts", "routes", "dry-run", str(edit), "--traffic", str(traffic), "--against", str(config), "--no-health"]
    done = subprocess.run([*command, "--format", "json"], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shadow = json.loads(done.stdout)["shadow"]
    assert shadow["note"] is None
    [move] = shadow["routes"]
    # The rate as the cutover gate counts it, straight from the store's rows.
    live = [row for row in rows if row["source"] == "live"]
    rate = sum(map(_mismatch, live)) / len(live)
    assert 0 < rate < 1
    old = RouteTable.build(load_config(config, env=ENV), "old").by_id["catalog-read"]
    moving = [n for n in range(USERS) if old.bucket(f"user-{n:04d}") >= 7000]  # the oldest upstream keeps the low buckets
    assert (move["route"], move["from"], move["to"]) == ("catalog-read", "monolith", "catalog")
    assert move["moving"] == len(moving) > 0
    assert move["compared"] == len(live) == USERS
    assert move["mismatch_rate"] == round(rate, 6)
    assert move["predicted_mismatches"] == round(len(moving) * rate, 3) == shadow["predicted_mismatches"]
    assert move["enough_history"] and move["note"] is None
    # Per endpoint: the candidate gets every review wrong and a third of the products.
    endpoints = {e["endpoint"]: e for e in move["endpoints"]}
    assert set(endpoints) == {"GET /api/products/{id}", "GET /api/products/{id}/reviews"}
    for endpoint, entry in endpoints.items():
        mine = [row for row in live if row["endpoint"] == endpoint]
        reviews = endpoint.endswith("reviews")
        assert entry["moving"] == sum(1 for n in moving if (n % 4 == 0) == reviews)
        assert entry["compared"] == len(mine) and entry["mismatched"] == sum(map(_mismatch, mine))
    assert endpoints["GET /api/products/{id}/reviews"]["mismatch_rate"] == 1.0
    assert move["endpoints"][0]["predicted_mismatches"] >= move["endpoints"][1]["predicted_mismatches"]
    md = subprocess.run([*command, "--format", "md"], env=ENV, capture_output=True, text=True, timeout=60)
    assert md.returncode == 0, md.stderr
    assert "## Predicted shadow mismatches" in md.stdout
    assert f"| catalog-read | monolith → catalog | {len(moving)} | {USERS} | {100 * rate:.2f}% | {len(moving) * rate:.1f} |" in md.stdout


def test_dry_run_says_no_shadow_history_without_a_store(shadowed: Any) -> None:
    from scripts.routes_cmd import _render, dry_run_routes

    tmp_path, upstreams, traffic, config, rows = shadowed
    routes, extra = _shadowed_routes(0, traffic, store="elsewhere/none.db")
    against = write_config(tmp_path / "nostore.yaml", upstreams, routes=routes, extra=extra)
    routes, extra = _shadowed_routes(30, tmp_path / "unused.jsonl")
    edit = write_config(tmp_path / "edit.yaml", upstreams, routes=routes, extra=extra)
    report = dry_run_routes(edit, traffic, against=against, health=False, env=ENV)
    assert report.shadow_note == f"no shadow history: the shadow store named by {against} does not exist yet"
    assert not (tmp_path / "elsewhere").exists()
    [move] = report.shadow
    assert move.total.moving > 0 and move.total.compared == 0 and move.total.predicted is None
    assert move.note == "no shadow history of catalog on route catalog-read"
    text = _render(report, "text")
    assert "no shadow history: the shadow store" in text and "—" in text
    # The history since the tenth newest comparison: too little to predict from.
    since = dt.datetime.fromtimestamp(sorted(row["ts"] for row in rows)[-10], dt.UTC).isoformat()
    newer = sum(row["ts"] >= dt.datetime.fromisoformat(since).timestamp() for row in rows)
    [recent] = dry_run_routes(edit, traffic, against=config, health=False, shadow_since=since, env=ENV).shadow
    assert recent.total.compared == newer and 0 < newer < 20
    assert recent.note == f"too little history to predict ({newer} comparisons, fewer than 20)"
    with pytest.raises(DryRunError, match="--shadow-since 'yesterday' is neither a duration nor a time"):
        dry_run_routes(edit, traffic, against=config, health=False, shadow_since="yesterday", env=ENV)
    skipped = dry_run_routes(edit, traffic, against=config, health=False, shadow=False, env=ENV)
    assert skipped.shadow is None and skipped.as_dict()["shadow"] is None
    assert "Predicted shadow mismatches" not in _render(skipped, "text")
