"""The rehearsal's replay: recorded requests (`facade.traffic` records) sent to a scratch façade.

`survey(path, routes)` reads the file once (streaming): how many records, which can be replayed
(GET and HEAD: the recording keeps no bodies, so other methods are counted as not replayed, by
method and route), the time they span, and the requests they stand for on the plan's routes.
`Replay` sends the replayable records in a thread at the recorded pacing divided by `speed`, no
faster than `max_rate`, looping over the file for as long as the rehearsal runs. The recorded
digests stand in for the sticky values: a record's sticky header or cookie is sent with its
digest as the value, and its assignment digest as the assignment cookie, so one recorded user
stays one user (on one side of the split) through the replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from facade.dryrun import read_traffic

__all__ = ["Replay", "ReplayCounts", "Sticky", "Survey", "survey"]

REPLAYED_METHODS = ("GET", "HEAD")


@dataclass
class Survey:
    """What a traffic file holds, for the replay and the soak scaling."""

    records: int = 0
    replayable: int = 0
    on_routes: int = 0  # replayable records on the plan's routes
    weight_on_routes: float = 0.0  # requests they stand for (a record stands for 100 / sample percent)
    first_at: float | None = None
    last_at: float | None = None
    not_replayed: Counter[str] = field(default_factory=Counter)  # "POST catalog-write" -> n

    @property
    def span(self) -> float:
        """Seconds between the first and the last replayable record."""
        if self.first_at is None or self.last_at is None:
            return 0.0
        return self.last_at - self.first_at

    @property
    def cycle(self) -> float:
        """One pass through the file in recorded seconds: the span and one mean gap before it starts again."""
        if self.replayable <= 1:
            return 1.0
        return self.span + self.span / (self.replayable - 1) if self.span > 0 else float(self.replayable) / 100.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records, "replayable": self.replayable, "on_routes": self.on_routes,
            "weight_on_routes": self.weight_on_routes, "span_s": round(self.span, 3),
            "not_replayed": dict(sorted(self.not_replayed.items())),
        }


def _replayable(record: Mapping[str, Any]) -> bool:
    return str(record.get("method", "")).upper() in REPLAYED_METHODS


def survey(path: Path, routes: tuple[str, ...]) -> Survey:
    """One streaming pass over the traffic file (`DryRunError` on a bad record, located)."""
    found = Survey()
    for record in read_traffic(path):
        found.records += 1
        if not _replayable(record):
            found.not_replayed[f"{record.get('method')} {record.get('route')}"] += 1
            continue
        found.replayable += 1
        at = float(record.get("at") or 0.0)
        found.first_at = at if found.first_at is None else min(found.first_at, at)
        found.last_at = at if found.last_at is None else max(found.last_at, at)
        if record.get("route") in routes:
            found.on_routes += 1
            found.weight_on_routes += float(record.get("w") or 1.0)
    return found


@dataclass(frozen=True)
class Sticky:
    """Where the façade reads a route's sticky key, and the assignment cookie's name."""

    header: str | None = None
    cookie: str | None = None


@dataclass
class ReplayCounts:
    """What the replay sent and how the façade answered."""

    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # "2xx", "4xx", "5xx"
    by_route: Counter[str] = field(default_factory=Counter)
    failed: int = 0  # no answer (connection refused, timeout)
    loops: int = 0  # passes begun over the file
    started: float = 0.0
    stopped: float = 0.0
    behind_s: float = 0.0  # how far the last request went out after its due time

    def as_dict(self) -> dict[str, Any]:
        seconds = max(self.stopped - self.started, 1e-9) if self.started else 0.0
        return {
            "sent": self.sent, "statuses": dict(sorted(self.statuses.items())), "by_route": dict(sorted(self.by_route.items())),
            "failed": self.failed, "loops": self.loops, "seconds": round(seconds, 3),
            "rate": round(self.sent / seconds, 1) if seconds else 0.0, "behind_s": round(self.behind_s, 3),
        }


class Replay:
    """Sends the recorded reads to `base_url` in a thread of its own until `stop()`."""

    def __init__(
        self, path: Path, base_url: str, found: Survey, *, speed: float, max_rate: float,
        sticky: Mapping[str, Sticky], assignment_cookie: str, concurrency: int = 8,
    ) -> None:
        self.path = path
        self.base_url = base_url
        self.survey = found
        self.speed = speed
        self.max_rate = max_rate
        self.sticky = dict(sticky)
        self.assignment_cookie = assignment_cookie
        self.concurrency = concurrency
        self.counts = ReplayCounts()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> Replay:
        self._thread = threading.Thread(target=self._main, name="rehearsal-replay", daemon=True)
        self.counts.started = time.time()
        self._thread.start()
        return self

    def stop(self) -> ReplayCounts:
        """Stop sending, wait for the requests in flight, return the counts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.counts.stopped = time.time()
        if self._error is not None:
            raise self._error
        return self.counts

    def headers(self, record: Mapping[str, Any]) -> dict[str, str]:
        """The sticky header and cookies that stand in for the recorded user (its digests)."""
        sticky = self.sticky.get(str(record.get("route")), Sticky())
        headers: dict[str, str] = {}
        cookies: list[str] = []
        if sticky.header is not None:
            value = (record.get("headers") or {}).get(sticky.header.lower())
            if value:
                headers[sticky.header] = value
        if sticky.cookie is not None:
            value = (record.get("cookies") or {}).get(sticky.cookie)
            if value:
                cookies.append(f"{sticky.cookie}={value}")
        if record.get("assign"):
            cookies.append(f"{self.assignment_cookie}={record['assign']}")
        if cookies:
            headers["Cookie"] = "; ".join(cookies)
        return headers

    def _records(self) -> Iterator[tuple[float, Mapping[str, Any]]]:
        """(due time in recorded seconds from the start, record), the file looped until stopped."""
        first = self.survey.first_at or 0.0
        loop = 0
        while not self._stop.is_set():
            self.counts.loops += 1
            any_sent = False
            for record in read_traffic(self.path):
                if self._stop.is_set():
                    return
                if _replayable(record):
                    any_sent = True
                    yield loop * self.survey.cycle + float(record.get("at") or 0.0) - first, record
            if not any_sent:
                return
            loop += 1

    def _main(self) -> None:
        try:
            asyncio.run(self._send_all())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of stop()
            self._error = exc

    async def _send_all(self) -> None:
        # No cookie jar: every request carries exactly the recorded user's stand-in values.
        jar = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=15, limits=limits, cookies=jar, trust_env=False) as client:
            gate = asyncio.Semaphore(self.concurrency)
            start = time.monotonic()
            last_due = -1.0
            async with asyncio.TaskGroup() as group:
                for recorded, record in self._records():
                    due = max(recorded / self.speed, last_due + 1.0 / self.max_rate)
                    last_due = due
                    while not self._stop.is_set() and (wait := start + due - time.monotonic()) > 0:
                        await asyncio.sleep(min(wait, 0.1))
                    if self._stop.is_set():
                        break
                    await gate.acquire()
                    self.counts.behind_s = max(0.0, time.monotonic() - start - due)
                    group.create_task(self._send(client, gate, record))

    async def _send(self, client: httpx.AsyncClient, gate: asyncio.Semaphore, record: Mapping[str, Any]) -> None:
        try:
            target = str(record.get("path") or "/") + (f"?{record['query']}" if record.get("query") else "")
            with contextlib.suppress(httpx.HTTPError):
                response = await client.request(str(record["method"]).upper(), target, headers=self.headers(record))
                self.counts.statuses[f"{response.status_code // 100}xx"] += 1
                self.counts.by_route[str(record.get("route"))] += 1
                self.counts.sent += 1
                return
            self.counts.failed += 1
            self.counts.sent += 1
        finally:
            gate.release()
