"""The write switch's test stack: a seeded legacy database and an empty catalog store, the forward
and the reverse CDC as processes of their own (`strangler cdc run`), the monolith and the catalog
service, the façade on a routing file with catalog-read and catalog-write, a plan with `writes:`,
and a write load through the façade that records every acknowledged write for the checker."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg2

from common.postgres import EmbeddedPostgres
from common.waiting import wait_until
from extracted.catalog.app import create_app as create_catalog_app
from extracted.catalog.migrate import migrate
from monolith.app import create_app as create_monolith_app
from monolith.seed import SeedSizes
from tests.facade.proxy_support import facade
from tests.monolith.conftest import seeded_database
from tests.support import serve

ROOT = Path(__file__).resolve().parents[2]
SIZES = SeedSizes(products=60, categories=4, users=2, orders=3, seed=5, inactive_percent=0)
OWNERSHIP = "catalog.products: {service: [sku, title, slug, description, price_cents, active, category_id, attributes, created_at, updated_at], legacy: [stock]}"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scripts", *args]


@dataclass
class WriteStack:
    legacy_url: str
    store_url: str
    monolith_url: str
    catalog_url: str
    facade_url: str
    routing: Path
    plan: Path
    forward_spec: Path
    reverse_spec: Path
    forward_name: str
    reverse_name: str
    env: dict[str, str]
    directory: Path
    streams: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_stream(self, which: str) -> None:
        """Run one stream. Heartbeats every 30 s: between two, a forward stream that only sees the
        reverse stream's writes (filtered by origin) applies nothing, so the age of its last applied
        change grows past the plan's lag limit, and a rollback's preflight must tell it current."""
        spec = self.forward_spec if which == "forward" else self.reverse_spec
        with (self.directory / f"cdc-{which}.log").open("ab") as log:
            self.streams[which] = subprocess.Popen(cli("cdc", "run", "--spec", str(spec), "--heartbeat-interval", "30"),
                                                   cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def stop_stream(self, which: str) -> None:
        process = self.streams.pop(which, None)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def wait_streaming(self, which: str, timeout: float = 60.0) -> None:
        name = self.forward_name if which == "forward" else self.reverse_name
        url = self.legacy_url if which == "forward" else self.store_url

        def active() -> bool:
            return bool(_scalar(url, "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = %s",
                                (f"strangler_{name}",)))

        wait_until(active, timeout, 0.1, what=f"the {which} stream to run ({self.log(which)[-800:]})")

    def log(self, which: str) -> str:
        path = self.directory / f"cdc-{which}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def converge(self, timeout: float = 30.0) -> None:
        """Wait until each running stream has applied everything committed so far."""
        from cdc.fence import emit_fence, wait_applied

        if "forward" in self.streams:
            wait_applied(self.store_url, self.forward_name, emit_fence(self.legacy_url, "test"), timeout)
        if "reverse" in self.streams:
            wait_applied(self.legacy_url, self.reverse_name, emit_fence(self.store_url, "test"), timeout)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli("cutover", *args), cwd=ROOT, env={**self.env, "COLUMNS": "250"}, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def start_runner(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(cli("cutover", *args), cwd=ROOT, env={**self.env, "COLUMNS": "250"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def write_weights(self) -> dict[str, float]:
        from facade.config import load_config

        route = next(item for item in load_config(self.routing).routes if item.id == "catalog-write")
        return dict(route.to)

    def close(self) -> None:
        for which in list(self.streams):
            self.stop_stream(which)


def _scalar(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


def _execute(url: str, sql: str) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def _spec_copy(source: Path, target: Path, name: str) -> Path:
    text = source.read_text()
    lines = [f"name: {name}" if line.startswith("name:") else line for line in text.splitlines()]
    target.write_text("\n".join(lines) + "\n")
    return target


@contextlib.contextmanager
def write_stack(pg: EmbeddedPostgres, directory: Path, *, budget: str = "1s", slow_header: str | None = None) -> Iterator[WriteStack]:
    """The whole stack, streams running and caught up. `slow_header`: monolith writes carrying it
    take 8 s (an in-flight write that keeps a replica from acking)."""
    tag = uuid.uuid4().hex[:8]
    legacy = seeded_database(pg.create_database(f"legacy_w_{tag}"), SIZES)
    store = pg.create_database(f"catalog_w_{tag}")
    migrate(store)
    _execute(legacy, "ALTER TABLE public.catalog_product REPLICA IDENTITY FULL")  # the switch's preparation
    forward_name, reverse_name = f"catalog_{tag}", f"catalog_{tag}_rev"
    forward_spec = _spec_copy(ROOT / "extracted/catalog/sync.yaml", directory / "sync.yaml", forward_name)
    reverse_spec = _spec_copy(ROOT / "extracted/catalog/reverse.yaml", directory / "reverse.yaml", reverse_name)
    env = {**os.environ, "STRANGLER_MONOLITH_DATABASE_URL": legacy, "STRANGLER_CATALOG_DATABASE_URL": store}
    monolith_app = create_monolith_app(legacy)
    if slow_header is not None:
        monolith_app = _slowed(monolith_app, slow_header.lower().encode())
    with serve(monolith_app) as monolith_url, serve(create_catalog_app(store, monolith_url=monolith_url)) as catalog_url:
        routing = directory / "routing.yaml"
        routing.write_text(textwrap.dedent(f"""\
            version: 1
            upstreams:
              monolith: {{url: "{monolith_url}", connect_timeout: 1s, timeout: 10s, pool: 50}}
              catalog: {{url: "{catalog_url}", connect_timeout: 1s, timeout: 10s, pool: 50}}
            routes:
              - id: catalog-read
                match: {{path: /api/products/**, methods: [GET, HEAD]}}
                to: {{monolith: 0, catalog: 100}}
              - id: catalog-write   # moved by the write switch
                match: {{path: /api/products/**, methods: [POST, PUT, PATCH, DELETE]}}
                to: {{monolith: 100, catalog: 0}}
                timeout: 10s
            default: {{to: monolith, timeout: 10s}}
            """))
        with facade(routing) as (facade_url, _app):
            plan = directory / "cutover.yaml"
            plan.write_text(textwrap.dedent(f"""\
                version: 1
                name: writes-{tag}
                routing: {routing}
                routes: [catalog-read]
                target: catalog
                sync: {forward_spec}
                facade: {{replicas: ["{facade_url}"], reload_timeout: 10s}}
                steps: [100]
                soak: {{min_time: 6s, min_requests: 0}}
                interval: 1s
                gates:
                  cdc: {{max_lag: 2s, max_dead_letters: 0}}
                  verify: {{max_age: 1m, wait: 20s}}
                journal: {{database_url: "{store}", lease: 10s}}
                events: {{file: {directory / 'events.jsonl'}}}
                writes:
                  routes: [catalog-write]
                  budget: {budget}
                  reverse_sync: {reverse_spec}
                  ownership:
                    {OWNERSHIP}
                """))
            stack = WriteStack(legacy, store, monolith_url, catalog_url, facade_url, routing, plan, forward_spec,
                               reverse_spec, forward_name, reverse_name, env, directory)
            try:
                stack.start_stream("forward")
                stack.wait_streaming("forward")
                stack.start_stream("reverse")
                stack.wait_streaming("reverse")
                stack.converge(60)
                yield stack
            finally:
                stack.close()
                for url, name in ((legacy, forward_name), (store, reverse_name)):
                    with contextlib.suppress(psycopg2.Error):
                        _scalar(url, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                                (f"strangler_{name}",))


def _slowed(app: Any, header: bytes) -> Any:
    import asyncio

    async def slowed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and any(key == header for key, _ in scope["headers"]):
            await asyncio.sleep(8)
        await app(scope, receive, send)

    return slowed


@dataclass
class Write:
    kind: str
    marker: str
    product: int | None
    status: int | None
    sent: float
    latency: float
    error: str = ""


class WriteLoad:
    """Creates and updates through the façade from a few threads, each owning its products, until stopped."""

    def __init__(self, stack: WriteStack, *, threads: int = 3, pace: float = 0.004) -> None:
        self.stack = stack
        self.threads = threads
        self.pace = pace
        self.writes: list[Write] = []
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        with httpx.Client(base_url=stack.monolith_url, timeout=10) as client:
            response = client.post("/accounts/login", json={"username": "admin", "password": "admin"})
            assert response.status_code == 200, response.text
            self.session = client.cookies["sessionid"]

    def _loop(self, index: int) -> None:
        products = [pid for pid in range(1, SIZES.products + 1) if pid % self.threads == index]
        n = 0
        with httpx.Client(base_url=self.stack.facade_url, timeout=15, cookies={"sessionid": self.session}, trust_env=False) as client:
            while not self._stop.is_set():
                n += 1
                marker = f"m{index}-{n}-{uuid.uuid4().hex[:6]}"
                if n % 3 == 0:
                    kind, product = "create", None
                    call = lambda: client.post("/api/products", json={  # noqa: E731
                        "sku": marker, "name": f"Load {marker}", "price": "1.50", "category": 1, "attributes": {"marker": marker}})
                else:
                    kind, product = "update", products[n % len(products)]
                    call = lambda: client.patch(f"/api/products/{product}", json={"description": marker})  # noqa: E731
                sent = time.monotonic()
                try:
                    response = call()
                    status, error = response.status_code, "" if response.status_code < 400 else response.text[:200]
                except httpx.HTTPError as exc:
                    status, error = None, f"{type(exc).__name__}: {exc}"
                self.writes.append(Write(kind, marker, product, status, sent, time.monotonic() - sent, error))
                self._stop.wait(self.pace)

    def start(self) -> WriteLoad:
        self._workers = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(20)

    def check(self) -> dict[str, Any]:
        """Acknowledged writes lost or doubled in each store, and the client-visible errors."""
        acked = [w for w in self.writes if w.status is not None and w.status < 300]
        errors = [w for w in self.writes if w.status is None or w.status >= 400]
        creates = [w.marker for w in acked if w.kind == "create"]
        last_update: dict[int, str] = {}
        for w in sorted((w for w in acked if w.kind == "update"), key=lambda w: w.sent):
            assert w.product is not None
            last_update[w.product] = w.marker
        out: dict[str, Any] = {"acked": len(acked), "errors": len(errors), "error_samples": [w.error or w.status for w in errors[:3]]}
        for name, url, table, skus in (("legacy", self.stack.legacy_url, "public.catalog_product", "sku"),
                                       ("service", self.stack.store_url, "catalog.products", "sku")):
            conn = psycopg2.connect(url)
            try:
                with conn.cursor() as cur:
                    cur.execute(f"SELECT {skus}, count(*) FROM {table} WHERE {skus} = ANY(%s) GROUP BY {skus}", (creates,))
                    counts = dict(cur.fetchall())
                    cur.execute(f"SELECT id, description FROM {table} WHERE id = ANY(%s)", (list(last_update),))
                    descriptions = dict(cur.fetchall())
            finally:
                conn.close()
            lost = [m for m in creates if counts.get(m, 0) == 0]
            lost += [f"update {pid}: {marker} (has {descriptions.get(pid)!r})" for pid, marker in last_update.items()
                     if descriptions.get(pid) != marker]
            out[name] = {"lost": len(lost), "lost_samples": lost[:3], "doubled": sum(1 for c in counts.values() if c > 1)}
        return out


def journal(stack: WriteStack) -> list[dict[str, Any]]:
    conn = psycopg2.connect(stack.store_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('strangler.cutover_journal') IS NOT NULL")
            if not cur.fetchone()[0]:
                return []
            cur.execute("SELECT id, kind, detail FROM strangler.cutover_journal ORDER BY id")
            return [{"id": r[0], "kind": r[1], **r[2]} for r in cur.fetchall()]
    finally:
        conn.close()


def result_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        return json.loads(done.stdout)
    except ValueError as exc:
        raise AssertionError(f"not JSON (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}") from exc
