"""`shadow:` added, changed and removed on a live façade (README step 3), in one process and under
`strangler facade serve --workers 2`: every reload reconfigures the shadow addon."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from common.postgres import free_port
from facade.shadow.store import ShadowStore, ShadowStoreError
from scripts.facade_cmd import ADDONS
from tests.facade.proxy_support import facade, get, write_config
from tests.support import serve, wait_for

ROUTE = """
- id: catalog-read
  match: {{path: /api/products/**}}
  to: {{monolith: 100}}
{shadow}"""


class Upstream:
    """Answers every request with the same JSON; counts the mirrored ones (`X-Strangler-Shadow: 1`)."""

    def __init__(self) -> None:
        self.mirrored = 0
        self._lock = threading.Lock()

    def app(self) -> Starlette:
        async def answer(request: Request) -> JSONResponse:
            if request.headers.get("x-strangler-shadow") == "1":
                with self._lock:
                    self.mirrored += 1
            return JSONResponse({"id": request.path_params["id"], "name": "lamp"})

        return Starlette(routes=[Route("/api/products/{id}", answer)])


def routing(path: Path, urls: dict[str, str], store: Path, *, shadow: str = "") -> None:
    """routing.yaml with the catalog-read route, shadowed as `shadow` says (a YAML line or nothing)."""
    write_config(
        path, urls, routes=ROUTE.format(shadow=f"  shadow: {shadow}" if shadow else ""),
        extra=f'shadow_store: {{url: "sqlite:///{store}"}}\nshadow_worker: {{cpu: 100}}',
    )


def compared(store: Path) -> int:
    if not store.exists():
        return 0
    reader = ShadowStore(f"sqlite:///{store}", read_only=True)
    try:
        return len(reader.load().comparisons)
    except ShadowStoreError:  # the tables come with the first batch the worker writes
        return 0
    finally:
        reader.close()


def reloaded(url: str, after: str) -> str | None:
    """The version in force once a reload past `after` has finished (addons configured too)."""
    status = get(url + "/_strangler/routes").json()
    last = status["last_reload"]
    if last is not None and last["ok"] and last["version"] == status["version"] != after:
        return str(status["version"])
    return None


def send(url: str, n: int, *, connections: int = 1) -> None:
    def one(i: int) -> int:
        with httpx.Client(timeout=10) as client:
            return client.get(f"{url}/api/products/{i}").status_code

    with ThreadPoolExecutor(connections) as pool:
        assert set(pool.map(one, range(n))) == {200}


def test_adding_changing_and_removing_shadow_on_a_live_facade_takes_effect(tmp_path: Path) -> None:
    monolith, catalog, catalog_v2 = Upstream(), Upstream(), Upstream()
    store = tmp_path / "shadow.db"
    with serve(monolith.app()) as monolith_url, serve(catalog.app()) as catalog_url, serve(catalog_v2.app()) as catalog_v2_url:
        urls = {"monolith": monolith_url, "catalog": catalog_url, "catalog-v2": catalog_v2_url}
        path = tmp_path / "routing.yaml"
        routing(path, urls, store)
        with facade(path, addon_factories=ADDONS) as (url, _):
            version = get(url + "/_strangler/routes").json()["version"]
            send(url, 10)
            assert get(url + "/_strangler/shadow").json() == {"routes": {}, "store": None, "worker": None}

            # README step 3: add `shadow: {to: catalog, sample: 100}` to the route.
            routing(path, urls, store, shadow="{to: catalog, sample: 100}")
            version = wait_for(lambda: reloaded(url, version), timeout=30, what="the reload that adds shadow:")
            send(url, 20)
            wait_for(lambda: compared(store) == 20, timeout=30, what="20 comparisons in the store")
            numbers = get(url + "/_strangler/shadow").json()
            assert numbers["routes"]["catalog-read"]["to"] == "catalog"
            wait_for(lambda: get(url + "/_strangler/shadow").json()["routes"]["catalog-read"]["compared"] == 20, timeout=10, what="the counters")
            assert (catalog.mirrored, catalog_v2.mirrored) == (20, 0)

            # Changed: another candidate.
            routing(path, urls, store, shadow="{to: catalog-v2, sample: 100}")
            version = wait_for(lambda: reloaded(url, version), timeout=30, what="the reload that changes shadow:")
            send(url, 20)
            wait_for(lambda: compared(store) == 40, timeout=30, what="40 comparisons in the store")
            assert (catalog.mirrored, catalog_v2.mirrored) == (20, 20)
            assert get(url + "/_strangler/shadow").json()["routes"]["catalog-read"]["to"] == "catalog-v2"

            # Removed: the worker stops (after finishing what it had) and nothing more is mirrored.
            routing(path, urls, store)
            wait_for(lambda: reloaded(url, version), timeout=30, what="the reload that removes shadow:")
            assert get(url + "/_strangler/shadow").json() == {"routes": {}, "store": None, "worker": None}
            send(url, 20)
            assert (catalog.mirrored, catalog_v2.mirrored) == (20, 20)
            assert compared(store) == 40


def shadow_children(parent: int) -> dict[int, list[int]]:
    """Each façade worker of `parent` with the shadow worker processes it started."""
    out = {}
    for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        if "multiprocessing.spawn" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
            continue
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        out[int(pid)] = [int(c) for c in children if "facade.shadow.worker" in Path(f"/proc/{c}/cmdline").read_text(errors="replace")]
    return out


def shadow_workers_seen(url: str, seen: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Ask `/_strangler/shadow` on new connections (the kernel spreads them over the façade
    workers); keep the latest route numbers by shadow worker process."""
    for _ in range(10):
        body = httpx.get(f"{url}/_strangler/shadow", timeout=5, headers={"connection": "close"}).json()
        worker = body["worker"]
        if worker is not None and worker["running"]:
            seen[worker["pid"]] = body["routes"].get("catalog-read", {})
    return seen


def test_every_worker_of_a_multi_process_facade_follows_shadow_on_reload(tmp_path: Path) -> None:
    monolith, catalog = Upstream(), Upstream()
    store = tmp_path / "shadow.db"
    with serve(monolith.app()) as monolith_url, serve(catalog.app()) as catalog_url:
        urls = {"monolith": monolith_url, "catalog": catalog_url}
        path = tmp_path / "routing.yaml"
        routing(path, urls, store)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = tmp_path / "facade.log"
        with open(log_path, "wb") as log:
            # Each worker watches the file itself and reloads on its own.
            process = subprocess.Popen(
                [sys.executable, "-m", "scripts", "facade", "serve", "--config", str(path), "--port", str(port), "--workers", "2", "--no-access-log"],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        try:
            def ready() -> bool:
                assert process.poll() is None, log_path.read_text()
                try:
                    httpx.get(f"{url}/_strangler/health", timeout=2).raise_for_status()
                except httpx.HTTPError:
                    return False
                # Both workers serving, each with its table read and the file watched.
                return len(shadow_children(process.pid)) == 2 and log_path.read_text().count("Application startup complete") == 2

            wait_for(ready, timeout=60, what="two façade workers")
            assert all(not children for children in shadow_children(process.pid).values())

            routing(path, urls, store, shadow="{to: catalog, sample: 100}")
            # Both façade workers reload and start a shadow worker of their own.
            running: dict[int, dict[str, Any]] = {}
            try:
                wait_for(lambda: len(shadow_workers_seen(url, running)) == 2, timeout=60, what="a running shadow worker behind each façade worker")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; seen {running}; children {shadow_children(process.pid)}; log: {log_path.read_text()[-3000:]}") from None
            seen: dict[int, dict[str, Any]] = {}

            def both_compare() -> bool:
                send(url, 40, connections=8)  # concurrent connections reach both workers
                shadow_workers_seen(url, seen)
                return len(seen) == 2 and all(numbers.get("compared", 0) > 0 for numbers in seen.values())

            try:
                wait_for(both_compare, timeout=90, interval=0.2, what="both façade workers mirroring and comparing")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; by shadow worker: {seen}; children {shadow_children(process.pid)}; log: {log_path.read_text()[-3000:]}") from None
            assert all(len(children) == 1 for children in shadow_children(process.pid).values())
            wait_for(lambda: compared(store) == catalog.mirrored > 0, timeout=30, what="every mirror compared and stored")

            routing(path, urls, store)
            wait_for(
                lambda: all(not children for children in shadow_children(process.pid).values()), timeout=60,
                what="both façade workers stopping their shadow worker",
            )
            before = (catalog.mirrored, compared(store))
            send(url, 40, connections=8)
            assert (catalog.mirrored, compared(store)) == before
            assert "Traceback" not in log_path.read_text()
        finally:
            process.terminate()
            process.wait(timeout=30)
        assert process.returncode == 0, log_path.read_text()
