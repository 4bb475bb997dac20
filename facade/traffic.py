"""The traffic recorder: a sample of each route's requests, as metadata, for `routes dry-run`.

An addon. Per sampled request the hook puts a few references on a bounded queue (full: the
record is dropped and counted); a writer task turns them into JSON lines on a worker thread, so
digests, encoding and file I/O stay off the request path. A line holds the method, the raw path
and query, the route and upstream the façade chose, and every value a route's match or sticky key
of the table in force could use, each as a keyed digest (`facade.routing.key_digest` under
`assignment.key`), never raw:

    {"v": 1, "kid": "…", "at": 1733.2, "route": "catalog-read", "upstream": "catalog", "w": 10.0,
     "method": "GET", "path": "/api/products/7", "query": "",
     "headers": {"x-user-id": "<digest>", "x-version": null}, "cookies": {"sessionid": null},
     "client": "<digest>", "assign": "<digest>", "assign_new": false, "forced": null,
     "re": {"header x-version ~v[12]": false}}

A name mapped to null was looked for and absent. Sticky keys are hashed with the same digest the
façade computes buckets from, so a dry-run recomputes any route's bucket exactly. `w` is how many
requests the line stands for (100 / sample percent). Regular-expression conditions cannot be
evaluated on digests: their results for the recording table are kept in `re`. `kid` names the
key without revealing it, so a dry-run can tell that its table hashes the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from facade.addons import Flow
from facade.config import TrafficRecordConfig
from facade.proxy import _COOKIE_VALUE, _Cookies
from facade.routing import Route, RouteTable, key_digest, override, sticky_key

__all__ = ["RECORD_VERSION", "TrafficRecorder", "condition_label", "key_id", "record_line"]

log = logging.getLogger("strangler.facade")

RECORD_VERSION = 1
_BATCH = 512


def key_id(secret: bytes) -> str:
    """A public name for the assignment key: equal keys, equal ids; the key cannot be derived."""
    return hashlib.blake2b(b"strangler traffic key id", key=secret, digest_size=8).hexdigest()


def condition_label(kind: str, name: str, value: str) -> str:
    """How a regular-expression condition is named in a record's `re`: `header x-version ~v[12]`."""
    return f"{kind} {name} {value}"


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the recorder does for one table: sampling and the names it digests."""

    config: TrafficRecordConfig
    secret: bytes
    kid: str
    headers: tuple[str, ...]
    cookies: tuple[str, ...]
    patterns: tuple[tuple[str, str, str], ...]  # (kind, name, ~regex) of header and cookie conditions

    @classmethod
    def build(cls, table: RouteTable) -> _Plan | None:
        config = table.config.traffic_record
        if config is None or table.secret is None:
            return None
        headers: dict[str, None] = {}
        cookies: dict[str, None] = {}
        patterns: dict[tuple[str, str, str], None] = {}
        for route in table.all_routes:
            match, sticky = route.config.match, route.config.sticky
            for name, value in match.headers.items():
                headers[name] = None
                if value.startswith("~"):
                    patterns["header", name, value] = None
            for name, value in match.cookies.items():
                cookies[name] = None
                if value.startswith("~"):
                    patterns["cookie", name, value] = None
            if sticky is not None and sticky.header is not None:
                headers[sticky.header.lower()] = None
            if sticky is not None and sticky.cookie is not None:
                cookies[sticky.cookie] = None
        return cls(config, table.secret, key_id(table.secret), tuple(headers), tuple(cookies), tuple(patterns))

    def sample(self, route_id: str) -> float:
        return self.config.routes.get(route_id, self.config.sample)


# What the hook hands to the writer: references only, nothing computed on the request path.
_Item = tuple[_Plan, Route, RouteTable, str, str, bytes, bytes, list[tuple[bytes, bytes]], str | None, str | None, float, float]


def record_line(item: _Item) -> dict[str, Any]:
    """The JSON record of one sampled request (runs on the writer's thread)."""
    plan, route, table, upstream, method, raw_path, query, raw_headers, client, used_key, at, percent = item
    text: dict[str, str] = {}
    for header, value in raw_headers:
        label = header.decode("latin-1")
        previous = text.get(label)
        decoded = value.decode("latin-1")
        # As the proxy joins repeated headers, so conditions see the same text.
        text[label] = decoded if previous is None else previous + ("; " if label == "cookie" else ", ") + decoded
    cookies = _Cookies(text.get("cookie"))

    def digest(value: str | None) -> str | None:
        if value is None:
            return None
        return key_digest(plan.secret, value).hex() if value else ""

    forced = override(table, route, text) if table.config.assignment.override_header else None
    # The override secret never reaches addons: a candidate the façade did not serve was refused.
    forced = forced if forced == upstream else None
    assignment = cookies.get(table.config.assignment.cookie)
    valid = assignment if assignment is not None and _COOKIE_VALUE.fullmatch(assignment) else None
    # The façade drew a new assignment cookie when nothing else gave a key on a split route.
    drawn = (
        valid is None
        and forced is None
        and len(route.upstreams) > 1
        and sticky_key(route, text, cookies, client) is None
        and used_key is not None
    )
    patterns: dict[str, bool] = {}
    for kind, name, value in plan.patterns:
        actual = text.get(name) if kind == "header" else cookies.get(name)
        patterns[condition_label(kind, name, value)] = actual is not None and route_pattern_holds(value, actual)
    return {
        "v": RECORD_VERSION,
        "kid": plan.kid,
        "at": round(at, 3),
        "route": route.id,
        "upstream": upstream,
        "w": round(100.0 / percent, 6),
        "method": method,
        "path": raw_path.decode("latin-1"),
        "query": query.decode("latin-1"),
        "headers": {name: digest(text.get(name)) for name in plan.headers},
        "cookies": {name: digest(cookies.get(name)) for name in plan.cookies},
        "client": digest(client),
        "assign": digest(used_key if drawn else valid),
        "assign_new": drawn,
        "forced": forced,
        "re": patterns,
    }


def route_pattern_holds(condition: str, value: str) -> bool:
    """Whether a `~regex` condition holds for `value` (the whole value must match)."""
    return re.fullmatch(condition[1:], value) is not None


class TrafficRecorder:
    """Records a sample of requests per route as JSON lines (see the module docstring).

    Follows the table in force: `configure(table)` is called on every reload, and a flow on a
    table not seen yet reconfigures too, so adding, changing or removing `traffic_record:` on a
    live façade takes effect at once. Counters: `recorded`, `dropped` (queue full or not started),
    `failed` (a write that raised).
    """

    admin_name = "traffic"

    def __init__(self) -> None:
        self._table: RouteTable | None = None
        self._plan: _Plan | None = None
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._files: dict[str, IO[str]] = {}
        self.recorded = 0
        self.dropped = 0
        self.failed = 0

    def configure(self, table: RouteTable) -> None:
        """Derive sampling and the digested names from `table`."""
        self._plan = _Plan.build(table)
        self._table = table

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._write_loop(), name="strangler-traffic-writer")

    async def stop(self) -> None:
        """Write what is queued, then close the files."""
        queue, task = self._queue, self._task
        self._queue = None
        if queue is not None and task is not None:
            await queue.join()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        for handle in self._files.values():
            with contextlib.suppress(OSError):
                handle.close()
        self._files.clear()

    def snapshot(self) -> dict[str, Any]:
        """What the admin API shows under `/_strangler/traffic` (counters and the file)."""
        plan = self._plan
        return {
            "file": plan.config.file if plan else None,
            "recorded": self.recorded,
            "dropped": self.dropped,
            "failed": self.failed,
            "queued": self._queue.qsize() if self._queue is not None else 0,
        }

    def request_started(self, flow: Flow) -> None:
        if flow.table is not self._table:
            self.configure(flow.table)
        plan = self._plan
        if plan is None:
            return
        percent = plan.sample(flow.route.id)
        if percent <= 0 or (percent < 100 and random.random() * 100 >= percent):
            return
        queue = self._queue
        if queue is None or queue.qsize() >= plan.config.queue:
            self.dropped += 1
            return
        client = flow.client[0] if flow.client else None
        queue.put_nowait(
            (plan, flow.route, flow.table, flow.upstream, flow.method, flow.raw_path, flow.query_string,
             flow.request_headers, client, flow.sticky_key, time.time(), percent)
        )

    async def _write_loop(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            batch = [await queue.get()]
            while len(batch) < _BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await asyncio.to_thread(self._write, batch)
                self.recorded += len(batch)
            except Exception:
                self.failed += len(batch)
                log.exception("the traffic recorder could not write %d records; it carries on", len(batch))
            finally:
                for _ in batch:
                    queue.task_done()

    def _write(self, batch: list[_Item]) -> None:
        lines: dict[str, list[str]] = {}
        for item in batch:
            lines.setdefault(item[0].config.file, []).append(json.dumps(record_line(item), separators=(",", ":")))
        for file, chunk in lines.items():
            handle = self._files.get(file)
            if handle is None:
                path = Path(file)
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = self._files[file] = path.open("a", encoding="utf-8")
            handle.write("\n".join(chunk) + "\n")
            handle.flush()
