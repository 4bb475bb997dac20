"""The write hold: held requests wait unread and go where the table says at release; the lease,
the budget, the drain before the ack, and the ack of every worker under `facade serve --workers 2`."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.postgres import free_port
from facade.app import create_app
from facade.config import check_text
from facade.edit import collapse_route, shift_weights
from facade.exceptions import FacadeError
from facade.hold import aggregate
from facade.hold_edit import clear_hold, prepare_switch, set_hold
from tests.facade.proxy_support import facade, get, post, read_body, serve, wait_for, write_config

ROUTES = """
- id: writes   # the write route the cutover moves
  match: {path: /api/products/**, methods: [POST, PUT, DELETE]}
  to: {monolith: 100, catalog: 0}
- id: reads
  match: {path: /api/reads/**}
  to: monolith
"""


class Recorder:
    """An upstream that records each request body it gets; with `gate`, it answers once the gate opens."""

    def __init__(self, name: str, gate: threading.Event | None = None) -> None:
        self.name = name
        self.gate = gate
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        self.bodies.append(body)
        if self.gate is not None:
            await asyncio.to_thread(self.gate.wait, 30)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain"), (b"x-upstream", self.name.encode())]})
        await send({"type": "http.response.body", "body": body})


def hold_of(url: str, hold_id: str) -> dict[str, Any] | None:
    """The hold's entry in `GET /_strangler/hold`, or None while no worker reports it."""
    report = get(f"{url}/_strangler/hold", timeout=5, headers={"connection": "close"}).json()
    return next((item for item in report["holds"] if item["id"] == hold_id), None)


def reload(url: str) -> None:
    answer = post(f"{url}/_strangler/reload", timeout=10).json()
    assert answer["ok"] is True, answer


def start_posts(pool: ThreadPoolExecutor, url: str, markers: list[str], path: str = "/api/products") -> list[Future[httpx.Response]]:
    return [
        pool.submit(post, url + path, content=marker.encode(), timeout=60, headers={"connection": "close"})
        for marker in markers
    ]


def hold_one(url: str, path: Path, pool: ThreadPoolExecutor, hold_id: str, *, lease: float = 120) -> Future[httpx.Response]:
    """Hold the write route and send one write into the hold; return once it is held."""
    set_hold(path, ["writes"], hold_id, lease=lease, budget=60)
    reload(url)
    (future,) = start_posts(pool, url, [hold_id])
    wait_for(lambda: (hold_of(url, hold_id) or {}).get("held") == 1, what=f"a write held by {hold_id!r}")
    return future


@pytest.fixture
def upstreams() -> Any:
    monolith, catalog = Recorder("monolith"), Recorder("catalog")
    with serve(monolith) as monolith_url, serve(catalog) as catalog_url:
        yield monolith, catalog, {"monolith": monolith_url, "catalog": catalog_url}


def test_held_requests_wait_unread_and_go_to_the_upstream_named_at_release(tmp_path: Path, upstreams: Any) -> None:
    monolith, catalog, urls = upstreams
    path = write_config(tmp_path / "routing.yaml", urls, routes=ROUTES)
    with facade(path) as (url, _), ThreadPoolExecutor(10) as pool:
        set_hold(path, ["writes"], "w-1", lease=120, budget=60)
        reload(url)
        assert wait_for(lambda: (hold_of(url, "w-1") or {}).get("acked"), what="the hold acked")
        markers = [f"product-{index}" for index in range(10)]
        futures = start_posts(pool, url, markers)
        wait_for(lambda: hold_of(url, "w-1")["held"] == 10, what="ten held requests")
        assert monolith.bodies == [] and catalog.bodies == []
        # The runner flips the write route while the writes are held, then releases.
        shift_weights(path, "writes", {"catalog": 100})
        reload(url)
        assert hold_of(url, "w-1")["held"] == 10
        clear_hold(path, "w-1")
        reload(url)
        answers = [future.result(timeout=30) for future in futures]
        report = hold_of(url, "w-1")
        metrics = get(f"{url}/_strangler/metrics").text
    assert [answer.status_code for answer in answers] == [200] * 10
    assert {answer.headers["x-upstream"] for answer in answers} == {"catalog"}
    assert sorted(catalog.bodies) == sorted(marker.encode() for marker in markers)  # none lost, none twice
    assert monolith.bodies == []
    assert report is not None and report["state"] == "released" and report["ended"] == ["cleared"]
    assert 'strangler_held_requests_total{outcome="released",route="writes"} 10.0' in metrics
    assert 'strangler_holds_total{end="cleared",route="writes"} 1.0' in metrics
    assert 'strangler_hold_wait_seconds_count{route="writes"} 10.0' in metrics
    assert 'strangler_hold_duration_seconds_count{route="writes"} 1.0' in metrics


def test_a_request_held_past_the_budget_gets_503_with_retry_after(tmp_path: Path, upstreams: Any) -> None:
    monolith, catalog, urls = upstreams
    path = write_config(tmp_path / "routing.yaml", urls, routes=ROUTES)
    with facade(path) as (url, _):
        set_hold(path, ["writes"], "w-2", lease=120, budget=0.3)
        reload(url)
        answer = post(url + "/api/products", content=b"late", timeout=30)
        metrics = get(f"{url}/_strangler/metrics").text
        still = hold_of(url, "w-2")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    body = answer.json()
    assert body["error"] == "held_too_long"
    assert "hold 'w-2'" in body["detail"] and "0.3s" in body["detail"]
    assert body["request_id"] == answer.headers["x-request-id"]
    assert monolith.bodies == [] and catalog.bodies == []
    assert 'strangler_held_requests_total{outcome="budget_exceeded",route="writes"} 1.0' in metrics
    assert still is not None and still["state"] == "holding" and still["held"] == 0


def test_an_expired_lease_releases_the_hold_by_itself(tmp_path: Path, upstreams: Any) -> None:
    monolith, catalog, urls = upstreams
    path = write_config(tmp_path / "routing.yaml", urls, routes=ROUTES)
    with facade(path) as (url, _), ThreadPoolExecutor(2) as pool:
        future = hold_one(url, path, pool, "w-3", lease=1.5)
        # Nobody clears the hold (a crashed runner): the lease ends it in the worker.
        answer = future.result(timeout=30)
        report = hold_of(url, "w-3")
    assert answer.status_code == 200 and answer.headers["x-upstream"] == "monolith"
    assert monolith.bodies == [b"w-3"]
    assert report is not None and report["state"] == "released" and report["ended"] == ["expired"]
    assert 'id: "w-3"' in path.read_text()  # the file still names it; the lease alone released it


def test_a_hold_on_one_route_does_not_delay_another(tmp_path: Path, upstreams: Any) -> None:
    monolith, _, urls = upstreams
    path = write_config(tmp_path / "routing.yaml", urls, routes=ROUTES)
    with facade(path) as (url, _), ThreadPoolExecutor(2) as pool:
        held = hold_one(url, path, pool, "w-4")
        reads = [post(url + f"/api/reads/{index}", content=b"read", timeout=10) for index in range(5)]
        assert not held.done()
        assert [answer.status_code for answer in reads] == [200] * 5
        assert monolith.bodies == [b"read"] * 5
        clear_hold(path, "w-4")
        reload(url)
        assert held.result(timeout=30).status_code == 200
    assert monolith.bodies[-1] == b"w-4"


def test_requests_in_flight_before_the_hold_finish_before_the_ack(tmp_path: Path) -> None:
    gate = threading.Event()
    slow = Recorder("monolith", gate)
    with serve(slow) as monolith_url, serve(Recorder("catalog")) as catalog_url, ThreadPoolExecutor(4) as pool:
        path = write_config(tmp_path / "routing.yaml", {"monolith": monolith_url, "catalog": catalog_url}, routes=ROUTES)
        with facade(path) as (url, _):
            (early,) = start_posts(pool, url, ["early"])
            wait_for(lambda: slow.bodies == [b"early"], what="the early write at the upstream")
            set_hold(path, ["writes"], "w-5", lease=120, budget=60)
            reload(url)
            installed = hold_of(url, "w-5")
            (late,) = start_posts(pool, url, ["late"])
            wait_for(lambda: hold_of(url, "w-5")["held"] == 1, what="the late write held")
            assert not early.done()
            gate.set()
            assert early.result(timeout=30).status_code == 200
            acked = wait_for(lambda: (hold := hold_of(url, "w-5")) and hold["acked"] and hold, what="the ack")
            assert slow.bodies == [b"early"]  # the held one is still waiting
            clear_hold(path, "w-5")
            reload(url)
            assert late.result(timeout=30).status_code == 200
    assert installed is not None
    assert installed["state"] == "holding" and installed["acked"] is False
    assert installed["inflight"] == 1 and installed["workers"]["drained"] == 0
    assert acked["inflight"] == 0 and acked["workers"] == {"expected": 1, "seen": 1, "installed": 1, "drained": 1}
    assert slow.bodies == [b"early", b"late"]


def test_the_hold_reaches_every_worker_of_facade_serve_workers_2(tmp_path: Path, upstreams: Any) -> None:
    monolith, catalog, urls = upstreams
    path = write_config(tmp_path / "routing.yaml", urls, routes=ROUTES)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "facade.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "scripts", "facade", "serve", "--config", str(path), "--port", str(port),
             "--workers", "2", "--no-watch", "--no-access-log"],
            stdout=subprocess.DEVNULL, stderr=log,
        )
    state_dir = tmp_path / ".strangler" / "hold" / f"{socket.gethostname()}-supervisor-{process.pid}"
    try:
        def two_workers() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                report = get(f"{url}/_strangler/hold", timeout=2).json()
            except httpx.HTTPError:
                return False
            return len(report["workers"]) == 2

        wait_for(two_workers, timeout=60, what="both façade workers reporting")
        set_hold(path, ["writes"], "w-6", lease=120, budget=60)
        reload(url)  # one worker reloads and has the supervisor signal both
        acked = wait_for(lambda: (hold := hold_of(url, "w-6")) and hold["acked"] and hold, timeout=30, what="the ack of both workers")
        assert len(list(state_dir.glob("*.json"))) == 2  # one state file per worker
        # Whichever worker answers, it speaks for both.
        for _ in range(6):
            assert hold_of(url, "w-6")["workers"] == {"expected": 2, "seen": 2, "installed": 2, "drained": 2}
        markers = [f"product-{index}" for index in range(20)]
        with ThreadPoolExecutor(20) as pool:
            futures = start_posts(pool, url, markers)
            wait_for(lambda: hold_of(url, "w-6")["held"] == 20, timeout=30, what="twenty held requests over both workers")
            assert monolith.bodies == [] and catalog.bodies == []
            shift_weights(path, "writes", {"catalog": 100})
            reload(url)
            clear_hold(path, "w-6")
            reload(url)
            answers = [future.result(timeout=30) for future in futures]
        released = wait_for(lambda: (hold := hold_of(url, "w-6")) and hold["state"] == "released" and hold, timeout=30, what="released in both")
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert process.returncode == 0, log_path.read_text()
    assert acked["workers"] == {"expected": 2, "seen": 2, "installed": 2, "drained": 2}
    assert [answer.status_code for answer in answers] == [200] * 20
    assert {answer.headers["x-upstream"] for answer in answers} == {"catalog"}
    assert sorted(catalog.bodies) == sorted(marker.encode() for marker in markers)
    assert monolith.bodies == []
    assert released["ended"] == ["cleared"] and released["workers"]["seen"] == 2
    assert not state_dir.exists() or list(state_dir.iterdir()) == []  # each worker removed its file


def test_the_ack_needs_every_expected_worker_installed_and_drained() -> None:
    def worker(pid: int, **entry: Any) -> dict[str, Any]:
        hold = {"id": "w", "route": "writes", "until": 100.0, "budget": 2.0, "released_at": None, "drained_at": 1.0,
                "held": 0, "oldest_since": None, "inflight": 0, "end": None, **entry}
        return {"pid": pid, "version": "v", "holds": [hold]}

    def only(workers: list[dict[str, Any]], expected: int = 2) -> dict[str, Any]:
        (hold,) = aggregate(workers, expected=expected, now=50.0)["holds"]
        return hold

    assert only([worker(1), worker(2)])["acked"] is True
    assert only([worker(1)])["acked"] is False  # the other worker has not reported yet
    busy = only([worker(1), worker(2, drained_at=None, inflight=3, held=4, oldest_since=48.5)])
    assert busy["acked"] is False and busy["inflight"] == 3 and busy["held"] == 4 and busy["oldest_wait"] == 1.5
    partial = only([worker(1), {"pid": 2, "version": "v", "holds": []}])
    assert partial["state"] == "partial" and partial["acked"] is False
    gone = only([worker(1, released_at=60.0, end="expired"), worker(2, released_at=60.0, end="expired")])
    assert gone["state"] == "released" and gone["ended"] == ["expired"] and gone["lease_left"] == 0.0


def test_hold_settings_are_validated_where_they_are_written() -> None:
    text = """version: 1
upstreams: {monolith: {url: "http://127.0.0.1:1"}}
routes:
  - id: writes
    to: monolith
    hold: {id: "no spaces", until: tomorrow, budget: 0s}
default: {to: monolith}
"""
    assert [str(problem) for problem in check_text(text)[1]] == [
        "routing.yaml:6:16: route 'writes': hold.id: hold id 'no spaces' must be letters, digits, '-', '_', '.' or ':', e.g. writes-1.",
        "routing.yaml:6:36: route 'writes': hold.until: hold until 'tomorrow' is not a unix time; write the lease end in seconds, e.g. 1767225600.5.",
        "routing.yaml:6:54: route 'writes': hold.budget: a hold budget of 0 answers every request with 503; give it a duration, e.g. 2s.",
    ]


def test_set_and_clear_hold_keep_every_other_byte(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "routing.yaml", {"monolith": "http://127.0.0.1:1", "catalog": "http://127.0.0.1:2"},
        routes=ROUTES + "- {id: flowy, match: {path: /flow/**}, to: monolith}   # flow style\n",
    )
    original = path.read_text()
    placed = set_hold(path, ["writes", "flowy"], "w-7", lease=30, budget=1.5, clock=lambda: 1000.0)
    assert placed.written and placed.until == 1030.0
    text = path.read_text()
    assert '  - id: writes   # the write route the cutover moves\n    hold: {id: "w-7", until: 1030.0, budget: 1500ms}\n' in text
    assert '- {id: flowy, hold: {id: "w-7", until: 1030.0, budget: 1500ms}, match: {path: /flow/**}, to: monolith}   # flow style' in text
    renewed = set_hold(path, ["writes", "flowy"], "w-7", lease=30, budget=1.5, clock=lambda: 2000.0)
    assert renewed.written and path.read_text().count("until: 2030.0") == 2
    with pytest.raises(FacadeError, match="already held by hold 'w-7'; clear that hold first"):
        set_hold(path, ["writes"], "other", lease=30)
    with pytest.raises(FacadeError, match="route 'nope' is not in"):
        set_hold(path, ["nope"], "w-8", lease=30)
    cleared = clear_hold(path, "w-7")
    assert cleared.routes == ("writes", "flowy")
    assert path.read_text() == original
    assert clear_hold(path, "w-7").written is False  # releasing twice is harmless


def test_clear_hold_with_weights_switches_and_releases_in_one_write(tmp_path: Path) -> None:
    path = write_config(tmp_path / "routing.yaml", {"monolith": "http://127.0.0.1:1", "catalog": "http://127.0.0.1:2"}, routes=ROUTES)
    original = path.read_text()
    set_hold(path, ["writes"], "w-1", lease=30, clock=lambda: 1000.0)
    switched = clear_hold(path, "w-1", weights={"writes": {"catalog": 100}})
    assert switched.written and switched.routes == ("writes",)
    assert path.read_text() == original.replace("to: {monolith: 100, catalog: 0}", "to: {monolith: 0, catalog: 100}")
    assert "+    to: {monolith: 0, catalog: 100}" in switched.diff and "-    hold:" in switched.diff
    set_hold(path, ["writes"], "w-2", lease=30)
    with pytest.raises(FacadeError, match="nowhere"):
        clear_hold(path, "w-2", weights={"writes": {"nowhere": 100}})
    assert "hold:" in path.read_text()  # a switch that cannot be written leaves the hold as it was


def test_a_prepared_switch_writes_the_same_files_as_set_and_clear_hold(tmp_path: Path) -> None:
    path = write_config(tmp_path / "routing.yaml", {"monolith": "http://127.0.0.1:1", "catalog": "http://127.0.0.1:2"}, routes=ROUTES)
    original = path.read_text()
    prepared = prepare_switch(path, ["writes"], "w-1", lease=30, budget=1.0, weights={"writes": {"catalog": 100}},
                              clock=lambda: 1000.0)
    assert path.read_text() == original and not prepared.placing.written  # nothing written yet
    prepared.rehearse()
    assert path.read_text() == original and sorted(p.name for p in tmp_path.iterdir()) == ["routing.yaml"]
    placed = prepared.place()
    assert placed.written and placed.until == 1030.0
    held = path.read_text()
    assert held == set_hold_text(tmp_path, original)
    prepared.switch()
    assert path.read_text() == original.replace("to: {monolith: 100, catalog: 0}", "to: {monolith: 0, catalog: 100}")
    # The file changed since it was prepared (someone else's edit): neither write happens.
    again = prepare_switch(path, ["writes"], "w-2", lease=30, budget=1.0, weights={"writes": {"monolith": 100}})
    path.write_text(path.read_text() + "# edited by hand\n")
    with pytest.raises(FacadeError, match="changed by someone else"):
        again.place()
    assert "hold:" not in path.read_text()
    with pytest.raises(FacadeError, match="nowhere"):  # validated when prepared, not inside the pause
        prepare_switch(path, ["writes"], "w-3", lease=30, budget=1.0, weights={"writes": {"nowhere": 100}})


def set_hold_text(tmp_path: Path, original: str) -> str:
    """The file `set_hold` writes for the same hold, on a copy."""
    copy = tmp_path / "copy" / "routing.yaml"
    copy.parent.mkdir()
    copy.write_text(original)
    set_hold(copy, ["writes"], "w-1", lease=30, budget=1.0, clock=lambda: 1000.0)
    text = copy.read_text()
    copy.unlink()
    copy.parent.rmdir()
    return text


def test_collapse_route_writes_the_upstream_alone_once_it_has_everything(tmp_path: Path) -> None:
    path = write_config(tmp_path / "routing.yaml", {"monolith": "http://127.0.0.1:1", "catalog": "http://127.0.0.1:2"}, routes=ROUTES)
    with pytest.raises(FacadeError, match="sends monolith 100%, catalog 0%; move it all to catalog first"):
        collapse_route(path, "writes", "catalog")
    shift_weights(path, "writes", {"catalog": 100})
    done = collapse_route(path, "writes", "catalog")
    assert done.written and "  to: catalog\n" in path.read_text()
    assert "# the write route the cutover moves" in path.read_text()
    assert collapse_route(path, "writes", "catalog").written is False


def test_the_route_timeout_starts_at_release_not_when_the_hold_began(tmp_path: Path) -> None:
    gate = threading.Event()
    catalog = Recorder("catalog", gate)  # answers only once the test has seen the write arrive
    with serve(Recorder("monolith")) as monolith_url, serve(catalog) as catalog_url, ThreadPoolExecutor(2) as pool:
        routes = ROUTES.replace("to: {monolith: 100, catalog: 0}", "to: {monolith: 100, catalog: 0}\n  timeout: 1s")
        path = write_config(tmp_path / "routing.yaml", {"monolith": monolith_url, "catalog": catalog_url}, routes=routes)
        with facade(path) as (url, _):
            held = hold_one(url, path, pool, "w-9")
            wait_for(lambda: hold_of(url, "w-9")["oldest_wait"] > 1.2, what="a wait longer than the route's timeout")
            shift_weights(path, "writes", {"catalog": 100})
            clear_hold(path, "w-9")
            reload(url)
            wait_for(lambda: catalog.bodies == [b"w-9"], what="the released write at the new upstream")
            gate.set()
            answer = held.result(timeout=30)
    assert answer.status_code == 200 and answer.headers["x-upstream"] == "catalog"


def test_the_lease_holds_without_a_lifespan_too(tmp_path: Path, upstreams: Any) -> None:
    monolith, _, urls = upstreams
    path = write_config(tmp_path / "routing.yaml", urls, routes=ROUTES)
    set_hold(path, ["writes"], "w-10", lease=1, budget=60)
    app = create_app(path, watch=False)  # a worker that starts inside a hold, served without lifespan

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://facade") as session:
            answer = await session.post("/api/products", content=b"w-10", timeout=30)
        await app.proxy.aclose()
        return answer

    answer = asyncio.run(send())
    assert answer.status_code == 200 and monolith.bodies == [b"w-10"]
    assert app.proxy.holds.released[-1].end == "expired"
