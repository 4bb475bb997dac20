"""Cutover fixtures: the monolith and the catalog service on the same data (tests/extracted),
a candidate in front of the catalog whose failures a test switches on, the façade on a routing
file of the test's own, steady read traffic through it, and the runner as a process of its own."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest

from tests.extracted.conftest import Pair, legacy_db, legacy_monolith, pair  # noqa: F401  (fixtures)
from tests.facade.proxy_support import facade
from tests.support import serve

__all__ = ["Candidate", "Stack", "Traffic", "journal_entries", "run_cli", "write_plan", "write_routing"]


class Candidate:
    """An ASGI proxy in front of the catalog service; while `failing`, it answers 500 itself."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.failing = False
        self.served = 0
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.client = httpx.AsyncClient(base_url=self.upstream, timeout=10)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if self.client is not None:
                        await self.client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.served += 1
        if self.failing:
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"error": "injected"}'})
            return
        assert self.client is not None
        path = scope["raw_path"].decode() + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k.lower() not in (b"host", b"content-length")]
        response = await self.client.request(scope["method"], path, headers=headers)
        out = [(k.encode(), v.encode()) for k, v in response.headers.items() if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")]
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        await send({"type": "http.response.body", "body": response.content})


def write_routing(path: Path, monolith: str, catalog: str, *, weight: float = 0, shadow: bool = False) -> Path:
    shadow_block = "\n            shadow: {to: catalog, sample: 0, noise_sample: 0}" if shadow else ""
    path.write_text(textwrap.dedent(f"""\
        # The test's routing file; comments must survive every step.
        version: 1
        upstreams:
          monolith: {{url: "{monolith}", connect_timeout: 1s, timeout: 10s, pool: 50}}
          catalog: {{url: "{catalog}", connect_timeout: 1s, timeout: 10s, pool: 50}}   # the candidate
        shadow_store: {{url: "sqlite:///{path.parent / 'shadow.db'}"}}
        routes:
          - id: catalog-read   # moved by the cutover
            match: {{path: /api/products/**, methods: [GET, HEAD]}}
            to: {{monolith: {100 - weight:g}, catalog: {weight:g}}}   # old first
            sticky: {{header: X-User}}{shadow_block}
        default: {{to: monolith, timeout: 10s}}
        """))
    return path


def write_plan(path: Path, routing: Path, replicas: list[str], journal_url: str, body: str) -> Path:
    head = textwrap.dedent(f"""\
        version: 1
        name: test-{path.parent.name[-20:].replace('_', '-')}
        routing: {routing}
        routes: [catalog-read]
        target: catalog
        facade: {{replicas: {json.dumps(replicas)}, reload_timeout: 20s}}
        journal: {{database_url: "{journal_url}", lease: 30s}}
        """)
    body = textwrap.dedent(body)
    if "events:" not in body:
        head += f"events: {{file: {path.parent / 'events.jsonl'}, metrics_file: {path.parent / 'cutover.prom'}}}\n"
    path.write_text(head + body)
    return path


@dataclass
class Traffic:
    """Steady reads through the façade by 400 sticky users, in a thread, until stopped."""

    url: str
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10, trust_env=False) as client:
            while not self._stop.is_set():
                user = self.sent % 400
                response = client.get(f"/api/products/{1 + self.sent % 200}", headers={"X-User": f"user-{user}"})
                client.cookies.clear()
                self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                self.sent += 1
                self._stop.wait(0.002)  # pacing, not synchronisation

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)


@dataclass
class Stack:
    pair: Pair
    candidate: Candidate
    candidate_url: str
    routing: Path
    facade_url: str
    journal_url: str
    directory: Path


@pytest.fixture
def stack(pair: Pair, database: str, tmp_path: Path) -> Iterator[Stack]:  # noqa: F811
    """The façade on a fresh routing file in front of the monolith and the candidate (catalog)."""
    candidate = Candidate(pair.catalog_url)
    with serve(candidate) as candidate_url:
        routing = write_routing(tmp_path / "routing.yaml", pair.monolith_url, candidate_url)
        with facade(routing) as (url, _app):
            yield Stack(pair, candidate, candidate_url, routing, url, database, tmp_path)


@contextlib.contextmanager
def traffic(url: str) -> Iterator[Traffic]:
    load = Traffic(url).start()
    try:
        yield load
    finally:
        load.stop()


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`strangler ...` in a process of its own."""
    env = {**os.environ, "COLUMNS": "300"}
    return subprocess.run([sys.executable, "-m", "scripts", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


def journal_entries(url: str) -> list[dict[str, Any]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('strangler.cutover_journal') IS NOT NULL")
            if not cur.fetchone()[0]:
                return []
            cur.execute("SELECT id, kind, step, weight, file_hash, detail FROM strangler.cutover_journal ORDER BY id")
            return [dict(zip(("id", "kind", "step", "weight", "file_hash", "detail"), row)) for row in cur.fetchall()]
    finally:
        conn.close()


def start_cli(*args: str) -> subprocess.Popen[str]:
    """`strangler ...` started in a process of its own (stdout and stderr piped)."""
    env = {**os.environ, "COLUMNS": "300"}
    return subprocess.Popen([sys.executable, "-m", "scripts", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def journal_has(url: str, predicate: Any) -> Any:
    """The first journal entry for which `predicate(entry)` holds, or None."""
    return next((entry for entry in journal_entries(url) if predicate(entry)), None)
