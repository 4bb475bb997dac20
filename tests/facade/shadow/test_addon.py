"""Shadow traffic through the real façade, with real primary and candidate upstreams on loopback."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from common.postgres import free_port
from facade.shadow.recorder import read_traffic
from facade.shadow.render import render
from facade.shadow.report import make_report
from facade.shadow.store import ShadowStore
from tests.support import serve, wait_for

SECRETS = {
    "authorization": "Bearer tok-0d1e2f-authorization-secret",
    "cookie": "sessionid=cookie-secret-5a6b7c",
    "set_cookie": "csrftoken=set-cookie-secret-8d9e0f",
    "api_token": "api-token-secret-1a2b3c",
    "x_api_key": "x-api-key-secret-4d5e6f",
}


DEEP_ID = 999


class Upstream:
    """A small JSON service that can play the primary or a (deliberately imperfect) candidate."""

    def __init__(self, *, candidate: bool = False, delay: float = 0.0, fail: bool = False, token_differs: bool = False) -> None:
        self.candidate = candidate
        self.token_differs = token_differs
        self.delay = delay
        self.fail = fail
        self.seen: list[tuple[str, str, dict[str, str], int]] = []
        self.active = 0  # requests being answered right now, and the most at once
        self.peak = 0

    def product(self, i: int) -> dict[str, Any]:
        if i == DEEP_ID:
            deep: dict[str, Any] = {"api_token": SECRETS["api_token"]}
            for _ in range(400):  # valid JSON, but too deep to redact and serialise again
                deep = {"a": deep}
            return deep
        body: dict[str, Any] = {
            "id": i,
            "name": f"Product {i}",
            "price": "9.99",
            "stock": 5,
            "tags": ["a", "b", "c"],
            # Different on every answer, the primary's own included: noise, with no ignore rule.
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
            "request_uuid": str(uuid.uuid4()),
            "owner": {"api_token": SECRETS["api_token"] + ("-c" if self.token_differs else "")},
        }
        if self.candidate:
            if i == 2:
                body["price"] = "10.99"  # value
            elif i == 3:
                del body["name"]  # missing field
            elif i == 4:
                body["tags"] = ["c", "a", "b"]  # reordered array
            elif i == 5:
                body["stock"] = "5"  # type
        return body

    def app(self) -> Starlette:
        async def product(request: Request) -> Response:
            self.seen.append((request.method, request.url.path, dict(request.headers), len(await request.body())))
            self.active += 1
            self.peak = max(self.peak, self.active)
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)  # the scenario: a slow candidate
            finally:
                self.active -= 1
            if self.fail:
                return JSONResponse({"detail": "boom"}, status_code=500)
            if request.method != "GET":
                return JSONResponse({"ok": True}, status_code=201)
            response = JSONResponse(self.product(int(request.path_params["id"])))
            response.set_cookie("csrftoken", SECRETS["set_cookie"].split("=", 1)[1] + ("-c" if self.token_differs else ""))
            return response

        async def plain(request: Request) -> Response:
            return JSONResponse({"plain": True})

        methods = ["GET", "POST", "PUT", "DELETE"]
        return Starlette(routes=[Route("/api/products/{id:int}", product, methods=methods), Route("/plain/{x}", plain)])


# No CPU budget unless a test sets one: these tests count every mirrored request.
NO_BUDGET = "shadow_worker: {cpu: 100}\n"


def routing(tmp: Path, primary: str, candidate: str, *, shadow: str, sandbox: bool = False, extra: str = NO_BUDGET) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "routing.yaml"
    path.write_text(
        f"""version: 1
upstreams:
  monolith: {{url: "{primary}"}}
  catalog: {{url: "{candidate}", sandbox: {str(sandbox).lower()}}}
  sandbox: {{url: "{candidate}", sandbox: true}}
routes:
  - id: unshadowed
    match: {{path: /api/products/**, headers: {{x-no-shadow: "1"}}}}
    to: {{monolith: 100}}
  - id: writes-opt-in
    match: {{path: /api/products/**, headers: {{x-writes: opt-in}}}}
    to: {{monolith: 100}}
    shadow: {{to: catalog, methods: [POST], allow_writes: true}}
  - id: writes-sandbox
    match: {{path: /api/products/**, headers: {{x-writes: sandbox}}}}
    to: {{monolith: 100}}
    shadow: {{to: sandbox, methods: [POST]}}
  - id: catalog-read
    match: {{path: /api/products/**}}
    to: {{monolith: 100}}
    shadow: {shadow}
  - id: plain
    match: {{path: /plain/**}}
    to: {{monolith: 100}}
default: {{to: monolith}}
shadow_store: {{url: "sqlite:///{tmp}/shadow.db"}}
{extra}"""
    )
    return path


@contextmanager
def facade(tmp: Path, primary: Upstream, candidate: Upstream | None, *, shadow: str, sandbox: bool = False, extra: str = NO_BUDGET) -> Iterator[tuple[httpx.Client, str]]:
    from facade.app import create_app
    from scripts.facade_cmd import ADDONS

    with ExitStack() as stack:
        primary_url = stack.enter_context(serve(primary.app()))
        candidate_url = stack.enter_context(serve(candidate.app())) if candidate else f"http://127.0.0.1:{free_port()}"
        config = routing(tmp, primary_url, candidate_url, shadow=shadow, sandbox=sandbox, extra=extra)
        url = stack.enter_context(serve(create_app(config, addon_factories=ADDONS)))
        client = stack.enter_context(httpx.Client(base_url=url, timeout=10))
        yield client, url


def counters(client: httpx.Client, route: str = "catalog-read") -> dict[str, Any]:
    response = client.get("/_strangler/shadow")
    assert response.status_code == 200, response.text
    return response.json()["routes"].get(route, {})


def stored(tmp: Path, n: int) -> ShadowStore:
    store = ShadowStore(f"sqlite:///{tmp}/shadow.db")
    wait_for(lambda: _rows(store) >= n, timeout=30, what=f"{n} comparisons in the store")
    return store


def _rows(store: ShadowStore) -> int:
    try:
        return len(store.load().comparisons)
    except Exception:  # noqa: BLE001 - the tables appear with the first write
        return 0


def test_candidate_differences_are_classified_and_per_request_noise_is_cancelled(tmp_path: Path) -> None:
    primary, candidate = Upstream(), Upstream(candidate=True)
    shadow = "{to: catalog, sample: 100, noise_sample: 30, compare: {headers: [content-type]}}"
    with facade(tmp_path, primary, candidate, shadow=shadow) as (client, url):
        for round_ in range(10):
            for i in range(1, 6):
                r = client.get(f"/api/products/{i}")
                assert r.status_code == 200 and r.json()["id"] == i
        wait_for(lambda: counters(client).get("compared", 0) == 50, timeout=30, what="50 comparisons")
        live = counters(client)
        metrics = client.get("/_strangler/metrics").text
        assert 'strangler_shadow_events_total{event="compared",route="catalog-read"} 50.0' in metrics
    assert live["sampled"] == live["sent"] == 50 and live["noise_probes"] > 0
    store = stored(tmp_path, 50)
    report = make_report(store)
    store.close()
    (ep,) = report.routes[0].endpoints
    assert ep.endpoint == "GET /api/products/{id}" and ep.compared == 50
    verdicts = {f.field: (f.real, tuple(f.kinds)) for f in ep.fields}
    assert verdicts["$.price"] == (True, ("value",))
    assert verdicts["$.name"] == (True, ("missing",))
    assert verdicts["$.tags"] == (True, ("array_order",))
    assert verdicts["$.stock"] == (True, ("type",))
    assert verdicts["$.generated_at"][0] is False and verdicts["$.request_uuid"][0] is False
    assert ep.matched == 0 and ep.matched_denoised == 10  # product 1 is the same once noise is removed
    assert all(s[2].get("x-strangler-shadow") == "1" for s in candidate.seen)
    # The mirror keeps the Host the client sent (the primary gets it as X-Forwarded-Host).
    assert {s[2]["host"] for s in candidate.seen} == {url.removeprefix("http://")}


def _latencies(client: httpx.Client, n: int, headers: dict[str, str]) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get("/api/products/1", headers=headers)
        samples.append(time.perf_counter() - t0)
        assert r.status_code == 200 and r.json()["id"] == 1 and r.json()["name"] == "Product 1"
    return samples


@pytest.mark.parametrize("kind", ["down", "slow", "error"])
def test_a_bad_candidate_never_touches_primary_answers_or_latency(tmp_path: Path, kind: str) -> None:
    primary = Upstream()
    candidate = None if kind == "down" else Upstream(candidate=True, delay=0.5 if kind == "slow" else 0.0, fail=kind == "error")
    queue = 4 if kind == "slow" else 100
    shadow = f"{{to: catalog, sample: 100, noise_sample: 0, queue: {queue}, inflight: 2, timeout: 300ms}}"
    with facade(tmp_path, primary, candidate, shadow=shadow) as (client, _):
        shadowed: list[float] = []
        plain: list[float] = []
        for _ in range(3):  # interleaved batches, so machine load hits both alike
            shadowed += _latencies(client, 10, {})
            plain += _latencies(client, 10, {"x-no-shadow": "1"})
        live = wait_for(lambda: (c := counters(client)) and c["sampled"] == c["sent"] + c["dropped"]["queue_full"] and (c["timed_out"] + c["failed"] + c["compared"]) == c["sent"] and c, timeout=30, what="shadows settled")
    assert live["sampled"] == 30
    if kind == "down":
        assert live["failed"] == live["sent"] > 0
    elif kind == "slow":
        assert live["timed_out"] == live["sent"] > 0 and live["dropped"]["queue_full"] > 0, live
    else:
        assert live["compared"] == live["sent"] == 30 and live["mismatched"] == 30
    # Shadowed requests are about as fast as unshadowed ones of the same endpoint; waiting for the
    # candidate would add its delay or the 300 ms shadow timeout to each of them.
    medians = statistics.median(shadowed), statistics.median(plain)
    assert medians[0] < 5 * medians[1], f"median with shadow {medians[0] * 1000:.2f} ms, without {medians[1] * 1000:.2f} ms"


def test_queue_full_drops_are_counted_and_stored(tmp_path: Path) -> None:
    primary, candidate = Upstream(), Upstream(candidate=True, delay=0.3)
    shadow = "{to: catalog, sample: 100, noise_sample: 0, queue: 1, inflight: 1, timeout: 2s}"
    with facade(tmp_path, primary, candidate, shadow=shadow) as (client, _):
        for _ in range(12):
            assert client.get("/api/products/1").status_code == 200
        live = wait_for(lambda: (c := counters(client)) and c["sent"] + c["dropped"]["queue_full"] == 12 and c, timeout=30, what="12 shadows sent or dropped")
        assert live["dropped"]["queue_full"] >= 5 and live["sampled"] == 12
        store = ShadowStore(f"sqlite:///{tmp_path}/shadow.db")
        wait_for(lambda: _dropped(store) == live["dropped"]["queue_full"], timeout=30, what="drops in the store")
        store.close()


def test_a_worker_over_its_cpu_budget_sheds_shadows_and_counts_them(tmp_path: Path) -> None:
    # 1% of a core is 10 ms of CPU a second (5 ms at once after idling), far less than a few
    # hundred mirrored comparisons need: the worker goes over its budget and says so; while it
    # is over, the façade drops sampled requests itself, counts them as `cpu_budget` and the
    # store keeps the count.
    primary, candidate = Upstream(), Upstream(candidate=True)
    shadow = "{to: catalog, sample: 100, noise_sample: 0, queue: 1000, timeout: 5s}"
    with facade(tmp_path, primary, candidate, shadow=shadow, extra="shadow_worker: {cpu: 1}\n") as (client, _):
        sent = 0

        def over_budget() -> dict[str, Any] | None:
            nonlocal sent
            worker = client.get("/_strangler/shadow").json()["worker"]
            if worker["over_budget"]:
                return worker
            for _ in range(20):
                assert client.get("/api/products/1").status_code == 200
            sent += 20
            return None

        worker = wait_for(over_budget, timeout=60, what="the worker over its CPU budget")
        assert worker["cpu_budget"] == 1
        for _ in range(50):
            assert client.get("/api/products/1").status_code == 200
        live = wait_for(lambda: (c := counters(client))["sent"] > 0 and c, timeout=30, what="mirrored shadows")
        assert live["sampled"] == sent + 50
        assert live["dropped"]["cpu_budget"] >= 40, live
        assert client.get("/_strangler/shadow").json()["worker"]["cpu_seconds"] > 0  # came with the counters
    store = ShadowStore(f"sqlite:///{tmp_path}/shadow.db")
    assert _dropped(store, "cpu_budget") == live["dropped"]["cpu_budget"]
    store.close()


def test_the_cpu_budget_is_a_token_bucket_over_process_time() -> None:
    from facade.shadow.worker import CpuBudget

    now, used = [0.0], [0.0]
    budget = CpuBudget(10, burst=1.0, clock=lambda: now[0], cpu=lambda: used[0])
    assert budget.within() and budget.balance == pytest.approx(0.1)  # starts with a full burst
    used[0] = 0.15  # spent more than the burst without time passing
    assert not budget.within()
    now[0] = 0.4  # 0.4 s earns 0.04 CPU-s: -0.05 + 0.04 is still short
    assert not budget.within()
    now[0] = 0.6  # 0.02 more: +0.01 is no longer in debt, but not yet half a burst back
    assert not budget.within() and budget.balance == pytest.approx(0.01)
    assert budget.wait() == pytest.approx(0.9)  # looks again once the whole burst is back
    now[0] = 1.0
    assert budget.within() and budget.balance == pytest.approx(0.05) and budget.wait() == 0
    used[0] = 0.19  # within again, so only a debt makes it over
    assert budget.within() and budget.balance == pytest.approx(0.01)
    now[0] = 100.0  # a long idle spell saves no more than one burst
    assert budget.within() and budget.balance == pytest.approx(0.1)


def test_mirrored_requests_in_flight_stay_within_the_cap(tmp_path: Path) -> None:
    primary, candidate = Upstream(), Upstream(candidate=True, delay=0.5)
    shadow = "{to: catalog, sample: 100, noise_sample: 0, queue: 100, inflight: 3, timeout: 5s}"
    with facade(tmp_path, primary, candidate, shadow=shadow) as (client, _):
        for _ in range(20):  # far faster than the candidate answers (6 a second): the queue fills
            assert client.get("/api/products/1").status_code == 200
        live = wait_for(lambda: (c := counters(client)) and c["compared"] == 20 and c, timeout=30, what="20 comparisons")
    assert live["dropped"]["queue_full"] == 0 and live["timed_out"] == 0
    assert candidate.peak == 3, f"{candidate.peak} mirrored requests at once; the cap is 3"


def _dropped(store: ShadowStore, reason: str | None = None) -> int:
    try:
        return sum(d["count"] for d in store.load().drops if reason is None or d["reason"] == reason)
    except Exception:  # noqa: BLE001 - the tables appear with the first write
        return 0


def test_writes_are_mirrored_only_when_allowed(tmp_path: Path) -> None:
    primary, candidate = Upstream(), Upstream(candidate=True)
    blocked = "{to: catalog, methods: [GET, POST, PUT, DELETE], noise_sample: 0}"
    with facade(tmp_path, primary, candidate, shadow=blocked) as (client, _):
        for method in ("POST", "PUT", "DELETE"):
            assert client.request(method, "/api/products/1", content=b"{}").status_code == 201
        assert client.get("/api/products/1").status_code == 200
        # An explicit opt-in, and an upstream declared as a sandbox, do receive writes.
        assert client.post("/api/products/2", content=b'{"a": 1}', headers={"x-writes": "opt-in"}).status_code == 201
        assert client.post("/api/products/3", content=b'{"b": 22}', headers={"x-writes": "sandbox"}).status_code == 201
        wait_for(
            lambda: [counters(client, r).get("compared") for r in ("catalog-read", "writes-opt-in", "writes-sandbox")] == [1, 1, 1],
            timeout=30, what="the GET and the two allowed POSTs mirrored",
        )
        assert counters(client)["skipped_writes"] == 3
    assert sorted((s[0], s[1], s[3]) for s in candidate.seen) == [
        ("GET", "/api/products/1", 0),
        ("POST", "/api/products/2", 8),
        ("POST", "/api/products/3", 9),
    ]
    assert {s[0] for s in primary.seen} == {"GET", "POST", "PUT", "DELETE"}


def test_secrets_never_reach_the_store_the_recording_or_the_report(tmp_path: Path) -> None:
    primary, candidate = Upstream(), Upstream(candidate=True, token_differs=True)
    traffic = tmp_path / "traffic.jsonl"
    shadow = (
        "{to: catalog, noise_sample: 50, redact: {headers: [x-api-key], body_fields: [api_token]}, "
        f'record: {{sample: 100, file: "{traffic}"}}, compare: {{headers: [set-cookie, x-api-key]}}}}'
    )
    headers = {"authorization": SECRETS["authorization"], "cookie": SECRETS["cookie"], "x-api-key": SECRETS["x_api_key"]}
    with facade(tmp_path, primary, candidate, shadow=shadow) as (client, _):
        for i in range(1, 6):
            assert client.get(f"/api/products/{i}?api_token={SECRETS['api_token']}", headers=headers).status_code == 200
        wait_for(lambda: counters(client).get("compared") == 5 and counters(client).get("recorded") == 5, timeout=30, what="5 comparisons")
    store = stored(tmp_path, 5)
    report = make_report(store)
    store.close()
    fields = {f.field for f in report.routes[0].endpoints[0].fields}
    # The candidate's token and cookie differ from the primary's: the differences are stored, their values are not.
    assert report.compared == 5 and {"$.owner.api_token", "headers.set-cookie"} <= fields
    store_files = [p for p in tmp_path.iterdir() if p.name.startswith("shadow.db")]  # the WAL too, if any
    files = {p.name: p.read_bytes() for p in store_files} | {"recording": traffic.read_bytes()}
    files |= {fmt: render(report, fmt).encode() for fmt in ("html", "md", "json")}
    assert all(files.values())
    # What is scanned holds the redacted data: the marker where each secret was.
    assert b"[REDACTED]" in b"".join(p.read_bytes() for p in store_files) and b"[REDACTED]" in files["recording"]
    for where, content in files.items():
        for name, secret in SECRETS.items():
            token = secret.split("=", 1)[-1].removeprefix("Bearer ").encode()
            assert token not in content, f"{name} leaked into the {where}"


def test_a_token_in_the_query_stays_out_of_a_failed_shadow_error(tmp_path: Path) -> None:
    # A candidate that is down: the error stored for each shadow quotes the URL it failed on.
    shadow = "{to: catalog, noise_sample: 0, timeout: 2s}"
    with facade(tmp_path, Upstream(), None, shadow=shadow) as (client, _):
        for i in range(1, 4):
            assert client.get(f"/api/products/{i}?api_token={SECRETS['api_token']}&page=2").status_code == 200
        wait_for(lambda: counters(client).get("failed") == 3, timeout=30, what="3 failed shadows")
    store = stored(tmp_path, 3)
    rows = store.load().comparisons
    store.close()
    assert [r["outcome"] for r in rows] == ["failed"] * 3 and all(r["error"] for r in rows)
    for path in tmp_path.iterdir():
        if path.name.startswith("shadow.db"):
            assert SECRETS["api_token"].encode() not in path.read_bytes(), f"the token leaked into {path.name}"


def test_traffic_recorded_by_the_facade_replays_against_a_candidate(tmp_path: Path) -> None:
    from facade.shadow.replay import run_replay

    primary, candidate = Upstream(), Upstream(candidate=True, token_differs=True)
    traffic = tmp_path / "traffic.jsonl"
    # Recording only: nothing is mirrored live (sample 0), every request is recorded.
    shadow = f'{{to: catalog, sample: 0, noise_sample: 0, redact: {{body_fields: [api_token]}}, record: {{sample: 100, file: "{traffic}"}}}}'
    with facade(tmp_path / "live", primary, None, shadow=shadow) as (client, _):
        for i in range(1, 11):
            assert client.get(f"/api/products/{1 + i % 5}", headers={"authorization": SECRETS["authorization"]}).status_code == 200
        wait_for(lambda: counters(client).get("recorded") == 10, timeout=30, what="10 recorded exchanges")
    assert traffic.read_bytes().count(b"\n") == 10 and SECRETS["api_token"].encode() not in traffic.read_bytes()
    store = ShadowStore(f"sqlite:///{tmp_path}/replay.db")
    with serve(candidate.app()) as candidate_url:
        summary = run_replay(traffic, candidate_url, store=store, rate=20.0)
    assert (summary.total, summary.replayed, summary.failed) == (10, 10, 0)
    assert summary.seconds >= 9 / 20  # paced: request i leaves i/rate seconds after the start
    assert all(s[2].get("x-strangler-shadow") == "1" and "authorization" not in s[2] for s in candidate.seen)
    report = make_report(store)
    (ep,) = report.routes[0].endpoints
    kinds = {f.field: set(f.kinds) for f in ep.fields}
    assert ep.compared == 10 and ep.endpoint == "GET /api/products/{id}"
    assert kinds["$.price"] == {"value"} and kinds["$.name"] == {"missing"} and kinds["$.tags"] == {"array_order"} and kinds["$.stock"] == {"type"}
    # The candidate's own token differs from the primary's, but both are redacted alike.
    assert "$.owner.api_token" not in kinds
    store.close()
    assert SECRETS["api_token"].encode() not in (tmp_path / "replay.db").read_bytes()


def test_recorded_exchanges_are_redacted_by_the_worker_not_on_the_facades_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from facade.shadow.redact import Redactor

    # Redacting parses and rewrites whole bodies: in the façade's process it would hold up
    # every other request on its event loop. Spy on it here; the worker process is not spied on.
    redacted_here: list[int] = []
    original = Redactor.body

    def spy(self: Redactor, body: bytes, content_type: str = "") -> tuple[bytes, bool]:
        redacted_here.append(len(body))
        return original(self, body, content_type)

    monkeypatch.setattr(Redactor, "body", spy)
    traffic = tmp_path / "traffic.jsonl"
    shadow = f'{{to: catalog, sample: 0, noise_sample: 0, redact: {{body_fields: [api_token]}}, record: {{sample: 100, file: "{traffic}"}}}}'
    with facade(tmp_path, Upstream(), None, shadow=shadow) as (client, _):
        for i in range(1, 6):
            assert client.get(f"/api/products/{i}").status_code == 200
        wait_for(lambda: counters(client).get("recorded") == 5, timeout=30, what="5 recorded exchanges")
        assert counters(client).get("record_dropped", 0) == 0
    records = list(read_traffic(traffic))
    assert [r.target for r in records] == [f"/api/products/{i}" for i in range(1, 6)]
    assert all(orjson.loads(r.response_body)["owner"]["api_token"] == "[REDACTED]" for r in records)
    assert redacted_here == []


def test_an_exchange_that_cannot_be_redacted_is_counted_lost_and_recording_goes_on(tmp_path: Path) -> None:
    traffic = tmp_path / "traffic.jsonl"
    shadow = f'{{to: catalog, sample: 0, noise_sample: 0, redact: {{body_fields: [api_token]}}, record: {{sample: 100, file: "{traffic}"}}}}'
    with facade(tmp_path, Upstream(), None, shadow=shadow) as (client, _):
        deep = client.get(f"/api/products/{DEEP_ID}")
        assert deep.status_code == 200 and SECRETS["api_token"].encode() in deep.content  # the client is served
        assert client.get("/api/products/1").status_code == 200
        wait_for(lambda: counters(client).get("record_lost") == 1 and counters(client).get("recorded") == 2, timeout=30, what="one exchange lost")
    assert [r.target for r in read_traffic(traffic)] == ["/api/products/1"]
    assert SECRETS["api_token"].encode() not in traffic.read_bytes()


def test_a_large_request_body_is_skipped_not_buffered(tmp_path: Path) -> None:
    primary, candidate = Upstream(), Upstream(candidate=True)
    shadow = "{to: catalog, methods: [POST], allow_writes: true, max_body: 64KB}"
    with facade(tmp_path, primary, candidate, shadow=shadow) as (client, _):

        def chunks() -> Iterator[bytes]:
            for _ in range(64):
                yield b"x" * 32 * 1024  # 2 MB, streamed

        assert client.post("/api/products/1", content=chunks()).status_code == 201
        assert client.post("/api/products/2", content=b"small").status_code == 201
        wait_for(lambda: counters(client).get("compared") == 1, timeout=30, what="the small POST mirrored")
        assert counters(client)["dropped"]["body_too_large"] == 1
    assert [s[3] for s in primary.seen] == [2 * 1024 * 1024, 5]
    assert [(s[1], s[3]) for s in candidate.seen] == [("/api/products/2", 5)]


def test_a_user_is_consistently_in_or_out_of_the_sample_on_a_route_with_one_upstream(tmp_path: Path) -> None:
    # `catalog-read` has one upstream and no sticky source: the assignment cookie names the user.
    primary, candidate = Upstream(), Upstream(candidate=True)
    with facade(tmp_path, primary, candidate, shadow="{to: catalog, sample: 50, noise_sample: 0}") as (client, _):
        for round_ in range(2):
            for user in range(40):
                headers = {"cookie": f"strangler_id=user{user:04d}", "x-request-id": f"r{round_}-{user}"}
                assert client.get("/api/products/1", headers=headers).status_code == 200
        wait_for(lambda: (c := counters(client)) and c["compared"] == c["sampled"], timeout=30, what="the sampled shadows compared")
    mirrored: dict[str, int] = {}
    for _, _, headers, _ in candidate.seen:
        mirrored[headers["cookie"]] = mirrored.get(headers["cookie"], 0) + 1
    assert set(mirrored.values()) == {2}, mirrored  # both of a user's requests, or neither
    assert 5 <= len(mirrored) <= 35  # about half of the 40 users


# --- the hooks alone, on real flows from a real route table -----------------------------------


@functools.cache
def _table(config_text: str) -> Any:
    from facade.config import parse_config
    from facade.routing import RouteTable

    return RouteTable.build(parse_config(config_text), "v1")


def _flow_for(config_text: str, path: str = "/api/products/1", method: str = "POST", sticky: str | None = "user-1") -> Any:
    from facade.addons import Flow

    table = _table(config_text)
    route = table.match(method, path, {}, {}, {})
    return Flow(
        request_id=uuid.uuid4().hex,
        route=route,
        table=table,
        upstream="monolith",
        method=method,
        raw_path=path.encode(),
        query_string=b"",
        request_headers=[(b"host", b"shop.example")],
        client=("127.0.0.1", 5000),
        started=time.monotonic(),
        sticky_key=sticky,
    )


HOOK_CONFIG = """version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:9"}
  catalog: {url: "http://127.0.0.1:9"}
routes:
  - id: catalog-read
    match: {path: /api/products/**}
    to: {monolith: 100}
    shadow: {to: catalog, sample: SAMPLE, methods: [GET, POST], allow_writes: true, max_body: 100KB}
default: {to: monolith}
"""


def test_request_body_over_the_cap_is_dropped_as_it_streams(tmp_path: Path) -> None:
    from facade.shadow import ShadowAddon

    async def scenario() -> tuple[int, int, int, int]:
        addon = ShadowAddon(store=ShadowStore(f"sqlite:///{tmp_path}/s.db"))
        await addon.start()
        flow = _flow_for(HOOK_CONFIG.replace("SAMPLE", "100"))
        addon.request_started(flow)
        tee = flow.state["shadow"]
        peak = 0
        for _ in range(20):  # 1.25 MB in 64 KB chunks against a 100 KB cap
            addon.request_chunk(flow, b"x" * 65536)
            peak = max(peak, sum(len(c) for c in tee.request))
        held = sum(len(c) for c in tee.request)
        flow.status, flow.response_headers, flow.duration = 201, [], 0.001
        addon.request_finished(flow)
        counters = addon.snapshot()["routes"]["catalog-read"]
        registry = CollectorRegistry()
        registry.register(addon)  # the same numbers for Prometheus
        exposition = generate_latest(registry).decode()
        await addon.stop()
        return peak, held, counters["dropped"]["body_too_large"], counters["sent"], exposition

    peak, held, dropped, sent, exposition = asyncio.run(scenario())
    assert peak <= 100 * 1024 and held == 0 and dropped == 1 and sent == 0
    assert 'strangler_shadow_events_total{event="dropped_body_too_large",route="catalog-read"} 1.0' in exposition


def test_sampling_is_deterministic_per_key_and_independent_of_routing(tmp_path: Path) -> None:
    from facade.shadow import ShadowAddon, sample_bucket

    async def decisions() -> dict[str, bool]:
        addon = ShadowAddon(store=ShadowStore(f"sqlite:///{tmp_path}/s.db"))
        await addon.start()
        out = {}
        for i in range(400):
            flow = _flow_for(HOOK_CONFIG.replace("SAMPLE", "30"), method="GET", sticky=f"user-{i}")
            addon.request_started(flow)
            out[f"user-{i}"] = "shadow" in flow.state and flow.state["shadow"].shadow
        await addon.stop()
        return out

    first, second = asyncio.run(decisions()), asyncio.run(decisions())
    assert first == second
    assert 80 < sum(first.values()) < 160  # about 30 % of 400 users
    route = _flow_for(HOOK_CONFIG.replace("SAMPLE", "30")).route
    in_canary = {k for k in first if route.bucket(k) < 3000}
    assert in_canary != {k for k, v in first.items() if v}  # not the same users as a 30 % weight
    assert sample_bucket("user-1", "catalog-read") == sample_bucket("user-1", "catalog-read")
