from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from facade.config import CompareConfig, RedactConfig
from facade.shadow import failure_record, judge, route_rules
from facade.shadow.compare import Reply
from facade.shadow.exceptions import ReportError, ShadowFailed
from facade.shadow.gate import parse_rate
from facade.shadow.noise import NoiseModel
from facade.shadow.render import render
from facade.shadow.report import build_report, make_report, parse_since
from facade.shadow.store import DropRecord, ShadowStore
from scripts import cli

SECRET = "hunter2-secret-token"
EP = "GET /api/products/{id}"
JSON = {"content-type": "application/json"}


def product(i: int, *, price: str = "9.99", stamp: str = "") -> bytes:
    return json.dumps({"id": i, "price": price, "generated": stamp or str(uuid.uuid4()), "owner": {"api_token": SECRET}}).encode()


def seed(store_url: str, *, n: int = 40, now: float | None = None) -> None:
    """Live-like history: every answer carries a per-request UUID; one product in four differs in price."""
    now = time.time() if now is None else now
    store = ShadowStore(store_url)
    store.create()
    rules = route_rules(CompareConfig(), RedactConfig(body_fields=("api_token",)))
    model = NoiseModel(rules.thresholds)
    records = []
    for i in range(n):
        primary = Reply(200, JSON, product(i))
        candidate = Reply(200, JSON, product(i, price="10.99" if i % 4 == 0 else "9.99"))
        second = Reply(200, JSON, product(i)) if i % 5 == 0 else None
        records.append(
            judge(
                route="catalog-read",
                endpoint=EP,
                request_line=f"GET /api/products/{i}",
                primary=primary,
                candidate=candidate,
                second=second,
                rules=rules,
                model=model,
                primary_ms=1.0 + i % 3,
                candidate_ms=2.0 + i % 5,
                ts=now - 600 + i * 10,
            )
        )
    records.append(failure_record(route="catalog-read", endpoint=EP, primary_status=200, primary_ms=1.0, outcome="timeout", error="ReadTimeout", ts=now - 5))
    store.write(records, [DropRecord(now - 100, "catalog-read", "queue_full", 7)])
    store.close()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/shadow.db"
    seed(url)
    return url


def test_report_separates_real_differences_from_noise(store_url: str) -> None:
    store = ShadowStore(store_url)
    report = make_report(store)
    store.close()
    (route,) = report.routes
    (ep,) = route.endpoints
    assert ep.compared == 40 and route.errors == {"timeout": 1} and route.dropped == {"queue_full": 7}
    assert ep.matched == 0  # the UUID differs everywhere
    assert ep.matched_denoised == 30  # only the price differences are real
    verdicts = {f.field: f.real for f in ep.fields}
    assert verdicts == {"$.price": True, "$.generated": False}
    price = next(f for f in ep.fields if f.field == "$.price")
    assert price.kinds == {"value": 10} and price.sample is not None and price.sample["primary_value"] == "9.99"
    assert ep.status_matrix == {"200→200": 40, "200→—": 1}
    assert ep.primary_latency.p50 == 2.0 and ep.candidate_latency.p99 == 6.0
    assert report.mismatch_rate == pytest.approx(0.25)


def test_renderings_carry_the_numbers_and_never_the_secret(store_url: str, tmp_path: Path) -> None:
    store = ShadowStore(store_url)
    report = make_report(store)
    store.close()
    md, js, page = (render(report, f) for f in ("md", "json", "html"))
    assert "$.price" in md and "75.0%" in md and "queue_full 7" in md
    data = json.loads(js)
    assert data["routes"][0]["endpoints"][0]["match_rate_denoised"] == 0.75
    assert "<svg" in page and "<script" not in page
    # One self-contained file: nothing it would fetch (the SVG namespace is a name, not a fetch).
    assert not re.search(r"""(https?:)?//|@import|url\(""", page.replace('xmlns="http://www.w3.org/2000/svg"', "")), "the page refers to something outside itself"
    for text in (md, js, page):
        assert SECRET not in text
    assert SECRET.encode() not in Path(store_url.removeprefix("sqlite:///")).read_bytes()


def test_since_and_route_filters(store_url: str) -> None:
    store = ShadowStore(store_url)
    assert make_report(store, since="245s").compared == 4  # seeded every 10 s up to 210 s ago
    # An unknown route is an error that names the routes there are, not an empty report.
    with pytest.raises(ReportError, match="route 'other' has no comparisons.*catalog-read"):
        make_report(store, route="other")
    store.close()


def test_cli_report_writes_file_and_fails_over_a_rate(store_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "r" / "report.html"
    ok = runner.invoke(cli.app, ["shadow", "report", "--store", store_url, "--format", "html", "-o", str(out), "--fail-over", "30%"])
    assert ok.exit_code == 0, ok.output
    assert out.read_text().startswith("<!doctype html>")
    failed = runner.invoke(cli.app, ["shadow", "report", "--store", store_url, "--format", "json", "--fail-over", "0.2"])
    assert isinstance(failed.exception, ShadowFailed) and "25.00%" in str(failed.exception)
    # What a pipeline sees from the real command: exit 1 and the reason, the report still printed.
    gate = subprocess.run(
        [sys.executable, "-m", "scripts", "shadow", "report", "--store", store_url, "--format", "json", "--fail-over", "0.2"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert gate.returncode == 1, gate.stderr
    assert "FAILED: mismatch rate 25.00% is above --fail-over 20.00%" in gate.stderr
    assert json.loads(gate.stdout)["compared"] == 40


def test_write_report_for_callers(store_url: str, tmp_path: Path) -> None:
    from facade.shadow.render import write_report

    report = write_report(store_url, tmp_path / "out" / "r.md", fmt="md")
    assert report.compared == 40 and "$.price" in (tmp_path / "out" / "r.md").read_text()


def test_option_parsing_explains_bad_values() -> None:
    assert parse_rate("5%") == 0.05 and parse_rate("0.1") == 0.1
    with pytest.raises(ReportError, match="'lots'"):
        parse_rate("lots")
    assert parse_since("1h", now=10_000.0) == 6400.0
    assert parse_since("1970-01-01T00:00:10Z", now=0.0) == 10.0
    with pytest.raises(ReportError, match="'yesterday'"):
        parse_since("yesterday", now=0.0)


def test_empty_store_is_explained(tmp_path: Path) -> None:
    from facade.shadow.store import ShadowStoreError

    store = ShadowStore(f"sqlite:///{tmp_path}/none.db")
    with pytest.raises(ShadowStoreError, match="no comparisons yet"):
        store.load()
    store.close()


def test_empty_report_renders() -> None:
    from facade.shadow.store import StoreData

    report = build_report(StoreData(), now=0.0)
    assert report.mismatch_rate == 0.0
    assert "<svg" in render(report, "html") and "0" in render(report, "md")


def test_gate_fails_a_candidate_that_does_not_answer(tmp_path: Path) -> None:
    """A candidate that is down compares nothing, and one that mostly times out is judged on what it
    answered: neither may pass `--fail-over` on a mismatch rate of 0 %."""
    now = time.time()
    down, flaky = f"sqlite:///{tmp_path / 'down.db'}", f"sqlite:///{tmp_path / 'flaky.db'}"
    seed(down, n=0, now=now)
    store = ShadowStore(down)
    store.write([failure_record(route="catalog-read", endpoint=EP, primary_status=200, primary_ms=1.0, outcome="failed", error="ConnectError", ts=now - i) for i in range(9)], [])
    store.close()
    seed(flaky, n=0, now=now)
    rules = route_rules(CompareConfig(), RedactConfig())
    store = ShadowStore(flaky)
    body = product(1, stamp="fixed")
    ok = judge(route="catalog-read", endpoint=EP, request_line="GET /api/products/1", primary=Reply(200, JSON, body), candidate=Reply(200, JSON, body),
               second=None, rules=rules, model=NoiseModel(rules.thresholds), primary_ms=1.0, candidate_ms=1.0, ts=now - 1)
    store.write([ok], [])
    store.close()

    runner = CliRunner()
    result = runner.invoke(cli.app, ["shadow", "report", "--store", down, "--format", "json", "--fail-over", "5%"])
    assert isinstance(result.exception, ShadowFailed), result.output
    assert "no requests were compared (10 candidate errors)" in str(result.exception)
    assert "did not answer 100.00%" in str(result.exception)
    assert json.loads(result.stdout)["error_rate"] == 1.0
    # One timeout and one answer, which matched: a mismatch rate of 0 % does not pass the gate.
    result = runner.invoke(cli.app, ["shadow", "report", "--store", flaky, "--format", "md", "--fail-over", "5%"])
    assert isinstance(result.exception, ShadowFailed), result.output
    assert "mismatch rate" not in str(result.exception) and "did not answer 50.00%" in str(result.exception)
    assert "1 unanswered by the candidate (50.0%)" in result.stdout
    assert runner.invoke(cli.app, ["shadow", "report", "--store", flaky, "--format", "md", "--fail-over", "60%"]).exit_code == 0
