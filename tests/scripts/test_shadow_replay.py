from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from typer.testing import CliRunner

from facade.recorder import RecorderError, TrafficRecorder, read_traffic, redacted_exchange
from facade.redact import Redactor
from facade.shadow_store import ShadowStore
from scripts import cli
from scripts.shadow_cmd import make_report, run_replay
from scripts.shadow_replay import ReplayError, resolve_target
from tests.support import serve

SECRET = "Bearer very-secret-token"
EP = "GET /api/products/{id}"


def primary_product(i: int) -> dict[str, object]:
    return {"id": i, "name": f"p{i}", "price": "9.99", "api_token": f"candidate-secret-{i}"}


def candidate_app(seen: list[dict[str, str]]) -> Starlette:
    async def product(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        i = int(request.path_params["id"])
        body = primary_product(i)
        if i == 3:
            body["price"] = 9.99  # a type difference
        return JSONResponse(body)

    return Starlette(routes=[Route("/api/products/{id}", product)])


def record_traffic(path: Path, n: int) -> None:
    redactor = Redactor.build(body_fields=["password", "api_token"])

    async def go() -> None:
        recorder = TrafficRecorder(path, interval=0.05)
        await recorder.start()
        for i in range(n):
            recorder.record(
                redacted_exchange(
                    redactor,
                    ts=1000.0 + i,
                    route="catalog-read",
                    endpoint=EP,
                    method="GET",
                    path=f"/api/products/{i}",
                    query="password=pw1234567" if i == 0 else "",
                    headers=[("authorization", SECRET), ("accept", "application/json"), ("host", "shop.example")],
                    body=b"",
                    body_truncated=False,
                    status=200,
                    response_headers=[("content-type", "application/json"), ("set-cookie", "sessionid=" + SECRET)],
                    response_body=json.dumps(primary_product(i)).encode(),
                    response_truncated=False,
                    duration_ms=1.5,
                )
            )
        await recorder.stop()
        assert recorder.recorded == n

    asyncio.run(go())


def test_recorded_file_is_redacted_and_reads_back(tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.jsonl"
    record_traffic(traffic, 3)
    raw = traffic.read_text()
    assert "very-secret-token" not in raw and "pw1234567" not in raw
    exchanges = list(read_traffic(traffic))
    assert [e.target for e in exchanges][1:] == ["/api/products/1", "/api/products/2"]
    assert ("accept", "application/json") in exchanges[0].replayable_headers()
    assert all(k != "authorization" for k, _ in exchanges[0].replayable_headers())


def test_replay_compares_against_recorded_answers_and_fills_the_store(tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.jsonl"
    record_traffic(traffic, 6)
    seen: list[dict[str, str]] = []
    store = ShadowStore(f"sqlite:///{tmp_path}/shadow.db")
    with serve(candidate_app(seen)) as url:
        summary = run_replay(traffic, url, store=ShadowStore(store.url), rate=200.0)
    assert (summary.replayed, summary.matched, summary.mismatched) == (6, 5, 1)
    assert all(h.get("x-strangler-shadow") == "1" and "authorization" not in h for h in seen)
    report = make_report(store)
    (ep,) = report.routes[0].endpoints
    assert ep.compared == 6 and [(f.field, f.kinds) for f in ep.fields] == [("$.price", {"type": 1})]
    assert store.load().comparisons[0]["source"] == "replay"
    store.close()
    # The candidate's own api_token values were redacted like the recorded primary's were:
    # they neither count as differences nor reach the store.
    assert b"candidate-secret" not in (tmp_path / "shadow.db").read_bytes()


def test_replay_against_a_down_candidate_counts_failures(tmp_path: Path) -> None:
    from scripts.postgres import free_port

    traffic = tmp_path / "traffic.jsonl"
    record_traffic(traffic, 2)
    store = ShadowStore(f"sqlite:///{tmp_path}/shadow.db")
    summary = run_replay(traffic, f"http://127.0.0.1:{free_port()}", store=store, timeout=2.0)
    assert summary.failed == 2 and summary.matched == 0


def test_cli_replay_json_summary(tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.jsonl"
    record_traffic(traffic, 2)
    with serve(candidate_app([])) as url:
        result = CliRunner().invoke(cli.app, ["shadow", "replay", "--traffic", str(traffic), "--against", url, "--store", f"sqlite:///{tmp_path}/s.db", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["matched"] == 2


def test_bad_inputs_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="'catalog'"):
        resolve_target("catalog", None)
    with pytest.raises(RecorderError, match="cannot read traffic file"):
        list(read_traffic(tmp_path / "missing.jsonl"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{}\n")
    with pytest.raises(RecorderError, match=r"broken.jsonl:1"):
        list(read_traffic(broken))
