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

from facade.shadow.recorder import RecorderError, TrafficRecorder, read_traffic, redacted_exchange
from facade.shadow.redact import Redactor
from facade.shadow.exceptions import ReplayError
from facade.shadow.replay import resolve_target, run_replay
from facade.shadow.report import make_report
from facade.shadow.store import ShadowStore
from scripts import cli
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

    async def write(request: Request) -> JSONResponse:
        seen.append(dict(request.headers) | {"method": request.method})
        return JSONResponse(primary_product(int(request.path_params["id"])))

    return Starlette(routes=[Route("/api/products/{id}", product, methods=["GET"]), Route("/api/products/{id}", write, methods=["POST", "PUT", "DELETE"])])


def record_traffic(path: Path, n: int, methods: tuple[str, ...] = ("GET",)) -> None:
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
                    method=methods[i % len(methods)],
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
    from common.postgres import free_port

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


def test_replay_sends_writes_only_to_a_sandbox_or_when_allowed(tmp_path: Path) -> None:
    from facade.config import parse_config

    traffic = tmp_path / "traffic.jsonl"
    record_traffic(traffic, 8, methods=("GET", "POST", "PUT", "DELETE"))
    seen: list[dict[str, str]] = []
    with serve(candidate_app(seen)) as url:
        config = parse_config(
            f"""version: 1
upstreams:
  monolith: {{url: "http://127.0.0.1:9"}}
  catalog: {{url: "{url}"}}
  staging: {{url: "{url}", sandbox: true}}
default: {{to: monolith}}
"""
        )
        runs = {}
        for name, against, allow in (("url", url, False), ("upstream", "catalog", False), ("sandbox", "staging", False), ("opt-in", url, True)):
            before = len(seen)
            summary = run_replay(traffic, against, config=config, store=ShadowStore(f"sqlite:///{tmp_path}/{name}.db"), allow_writes=allow)
            runs[name] = (summary.replayed, summary.skipped_writes, sorted(h.get("method", "GET") for h in seen[before:]))
    assert runs["url"] == runs["upstream"] == (2, 6, ["GET", "GET"])
    writes = ["DELETE", "DELETE", "GET", "GET", "POST", "POST", "PUT", "PUT"]
    assert runs["sandbox"] == runs["opt-in"] == (8, 0, writes)


def test_cli_replay_shows_progress_and_says_why_writes_were_skipped(tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.jsonl"
    record_traffic(traffic, 4, methods=("GET", "POST"))
    with serve(candidate_app([])) as url:
        result = CliRunner().invoke(cli.app, ["shadow", "replay", "--traffic", str(traffic), "--against", url, "--store", f"sqlite:///{tmp_path}/s.db"])
    assert result.exit_code == 0, result.output
    assert "replaying" in result.output and "4/4" in result.output
    assert "replayed 2 of 4" in result.output and "2 writes skipped (not a sandbox: pass --allow-writes" in result.output


def test_replay_reads_no_more_of_an_answer_than_its_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.responses import StreamingResponse

    from facade.shadow import replay as shadow_replay

    monkeypatch.setattr(shadow_replay, "CANDIDATE_BODY_CAP", 64 * 1024)
    produced = [0]

    async def endless(request: Request) -> StreamingResponse:
        async def chunks():  # 256 MB, if anyone read it all; it stops once the reader hangs up
            for _ in range(4096):
                if await request.is_disconnected():
                    return
                produced[0] += 65536
                yield b"x" * 65536

        return StreamingResponse(chunks(), media_type="application/json")

    traffic = tmp_path / "traffic.jsonl"
    record_traffic(traffic, 1)
    store = ShadowStore(f"sqlite:///{tmp_path}/s.db")
    with serve(Starlette(routes=[Route("/api/products/{id}", endless)])) as url:
        summary = run_replay(traffic, url, store=store)
    assert (summary.replayed, summary.mismatched) == (1, 1)
    assert produced[0] < 64 * 1024 * 1024, f"{produced[0]} bytes produced: the answer was read past its cap"
    (row,) = store.load().comparisons
    store.close()
    assert row["outcome"] == "compared" and not row["match"]
