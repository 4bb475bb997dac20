"""Traffic recording for offline replay: requests with their primary responses, one JSON per line.

Everything is redacted (`facade.shadow.redact`) and truncated before it is written. The façade's hooks
only capture a sampled exchange and hand it on (`ShadowSink.record`); `Recordings` redacts it where
the shadow work runs (the worker process, unless shadowing is inline), so redacting a large body
never holds up the façade's event loop. `TrafficRecorder` buffers lines in memory (bounded;
overflow is counted) and appends them to the file from a thread. `read_traffic` reads a file back.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from facade.shadow.exceptions import RecorderError
from facade.shadow.redact import REDACTED, Redactor

__all__ = ["RECORD_BODY_CAP", "RecordedExchange", "RecorderError", "Recordings", "TrafficRecorder", "read_traffic", "redacted_exchange"]

# Request and response bodies in a traffic file are cut here (replay cuts the candidate's alike).
RECORD_BODY_CAP = 64 * 1024

log = logging.getLogger("strangler.shadow.recorder")


@dataclass(frozen=True, slots=True)
class RecordedExchange:
    """One recorded request and the primary's response (redacted, bodies possibly truncated)."""

    ts: float
    route: str
    endpoint: str
    method: str
    target: str  # raw path and query, as sent by the client (query redacted)
    headers: tuple[tuple[str, str], ...]
    body: bytes
    body_truncated: bool
    status: int
    response_headers: tuple[tuple[str, str], ...]
    response_body: bytes
    response_truncated: bool
    duration_ms: float | None = None

    def to_line(self) -> bytes:
        return orjson.dumps(
            {
                "ts": self.ts,
                "route": self.route,
                "endpoint": self.endpoint,
                "method": self.method,
                "target": self.target,
                "headers": self.headers,
                "body": base64.b64encode(self.body).decode(),
                "body_truncated": self.body_truncated,
                "response": {
                    "status": self.status,
                    "headers": self.response_headers,
                    "body": base64.b64encode(self.response_body).decode(),
                    "truncated": self.response_truncated,
                },
                "duration_ms": self.duration_ms,
            }
        ) + b"\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecordedExchange:
        response = data["response"]
        return cls(
            ts=float(data["ts"]),
            route=str(data["route"]),
            endpoint=str(data["endpoint"]),
            method=str(data["method"]),
            target=str(data["target"]),
            headers=tuple((str(k), str(v)) for k, v in data["headers"]),
            body=base64.b64decode(data["body"]),
            body_truncated=bool(data["body_truncated"]),
            status=int(response["status"]),
            response_headers=tuple((str(k), str(v)) for k, v in response["headers"]),
            response_body=base64.b64decode(response["body"]),
            response_truncated=bool(response["truncated"]),
            duration_ms=data.get("duration_ms"),
        )

    def replayable_headers(self) -> list[tuple[str, str]]:
        """Request headers worth sending again: redacted ones and hop-by-hop ones left out."""
        skip = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade"}
        return [(k, v) for k, v in self.headers if k.lower() not in skip and v != REDACTED]


def redacted_exchange(
    redactor: Redactor,
    *,
    ts: float,
    route: str,
    endpoint: str,
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    body_truncated: bool,
    status: int,
    response_headers: Sequence[tuple[str, str]],
    response_body: bytes,
    response_truncated: bool,
    duration_ms: float | None,
) -> RecordedExchange:
    """Build a record with secrets redacted and bodies cut to the redactor's cap."""
    request_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    response_type = next((v for k, v in response_headers if k.lower() == "content-type"), "")
    req_body, req_cut = redactor.body(body, request_type)
    resp_body, resp_cut = redactor.body(response_body, response_type)
    q = redactor.query(query)
    return RecordedExchange(
        ts=ts,
        route=route,
        endpoint=endpoint,
        method=method,
        target=path + ("?" + q if q else ""),
        headers=tuple(redactor.header_pairs(headers)),
        body=req_body,
        body_truncated=body_truncated or req_cut,
        status=status,
        response_headers=tuple(redactor.header_pairs(response_headers)),
        response_body=resp_body,
        response_truncated=response_truncated or resp_cut,
        duration_ms=duration_ms,
    )


def read_traffic(path: str | Path) -> Iterator[RecordedExchange]:
    """Records of a traffic file, in order; a broken line raises with its number."""
    file = Path(path)
    try:
        handle = file.open("rb")
    except OSError as exc:
        raise RecorderError(f"cannot read traffic file {str(file)!r}: {exc.strerror}; record one with shadow.record in routing.yaml") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield RecordedExchange.from_json(orjson.loads(line))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise RecorderError(f"{file}:{number}: not a recorded exchange ({exc}); the file must come from the façade's recorder") from exc


class TrafficRecorder:
    """Appends recorded exchanges to a JSONL file from a worker task; never blocks the caller.

    What cannot be written (the buffer is full, the file cannot be appended to, the recorder is
    stopping) is counted in `lost`, by route in `lost_by_route`, and `on_lost` is called.
    """

    def __init__(self, path: str | Path, *, capacity: int = 5000, interval: float = 0.5,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.path = Path(path)
        self.capacity = capacity
        self.interval = interval
        self.on_lost = on_lost
        self.recorded = 0
        self.lost_by_route: collections.Counter[str] = collections.Counter()
        self._lines: list[tuple[str, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()

    @property
    def lost(self) -> int:
        return self.lost_by_route.total()

    async def start(self) -> None:
        self._start()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"traffic-recorder-{self.path.name}")

    def record(self, exchange: RecordedExchange) -> bool:
        """Queue one exchange for the file (starts the writer task on first use, so call it from
        the event loop); False, and counted as lost, when it cannot be taken."""
        if self._closing or len(self._lines) >= self.capacity:
            self._lose([exchange.route])
            return False
        self._start()
        self._lines.append((exchange.route, exchange.to_line()))
        return True

    def _lose(self, routes: Iterable[str]) -> None:
        self.lost_by_route.update(routes)
        if self.on_lost is not None:
            self.on_lost()

    async def flush(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            await asyncio.to_thread(self._append, [line for _, line in lines])
            self.recorded += len(lines)
        except OSError:
            log.exception("cannot append to traffic file %s", self.path)
            self._lose(route for route, _ in lines)

    def _append(self, lines: list[bytes]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.writelines(lines)

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except TimeoutError:
                pass
            await self.flush()

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()


class Recordings:
    """The traffic files of every route's `shadow.record`: redacts each exchange and queues it.

    `add` takes what the façade captured (the keyword arguments of `redacted_exchange` but the
    redactor) with the route's redaction settings; redactors are built once per setting. An
    exchange that cannot be redacted or written is logged and counted (`lost_by_route`), never
    raised: a bad body must not stop the recording of the next one.
    """

    def __init__(self, on_lost: Callable[[], None] | None = None) -> None:
        self.on_lost = on_lost
        self.recorders: dict[str, TrafficRecorder] = {}
        self._redactors: dict[tuple[tuple[str, ...], tuple[str, ...]], Redactor] = {}
        self._failed: collections.Counter[str] = collections.Counter()

    def add(self, file: str, redact_headers: Sequence[str], redact_fields: Sequence[str], captured: dict[str, Any]) -> bool:
        key = (tuple(redact_headers), tuple(redact_fields))
        try:
            redactor = self._redactors.get(key)
            if redactor is None:
                redactor = self._redactors[key] = Redactor.build(key[0], key[1], RECORD_BODY_CAP)
            exchange = redacted_exchange(redactor, **captured)
        except Exception:  # noqa: BLE001 - e.g. a body nested too deep to walk; the next one goes on
            log.exception("cannot record an exchange of route %s; it is left out of %s", captured.get("route"), file)
            self._failed[str(captured.get("route"))] += 1
            if self.on_lost is not None:
                self.on_lost()
            return False
        recorder = self.recorders.get(file)
        if recorder is None:
            recorder = self.recorders[file] = TrafficRecorder(file, on_lost=self.on_lost)
        return recorder.record(exchange)

    def lost_by_route(self) -> collections.Counter[str]:
        """Exchanges handed to `add` that did not reach their file, by route."""
        total = collections.Counter(self._failed)
        for recorder in self.recorders.values():
            total.update(recorder.lost_by_route)
        return total

    async def stop(self) -> None:
        for recorder in self.recorders.values():
            await recorder.stop()
