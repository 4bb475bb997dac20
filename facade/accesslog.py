"""One JSON line per request, as an addon.

Fields: ts (ISO 8601 UTC, milliseconds), request_id, method, path (raw, with the query string),
route, upstream, status, duration_ms, upstream_ms, bytes_in, bytes_out, error.

Two outputs: the `strangler.access` logger (the default; nothing is formatted when it would drop
the record), or a text stream (what `strangler facade serve` uses): lines are collected and
written together at most every `flush_interval` seconds, one write for many requests, and on stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TextIO

import orjson

from facade.addons import Flow

__all__ = ["ACCESS_LOGGER", "AccessLog"]

ACCESS_LOGGER = "strangler.access"


class AccessLog:
    """Addon writing the access log line when a flow finishes."""

    def __init__(self, logger: logging.Logger | None = None, *, stream: TextIO | None = None, flush_interval: float = 0.1) -> None:
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self.stream = stream
        self.flush_interval = flush_interval
        self._pending: list[str] = []
        self._handle: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def _ts(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def line(self, flow: Flow) -> str:
        """The JSON line for a finished flow."""
        path = flow.raw_path.decode("latin-1")
        if flow.query_string:
            path += "?" + flow.query_string.decode("latin-1")
        duration = flow.duration
        upstream = flow.upstream_duration
        return orjson.dumps(
            {
                "ts": self._ts(),
                "request_id": flow.request_id,
                "method": flow.method,
                "path": path,
                "route": flow.route.id,
                "upstream": flow.upstream,
                "status": flow.status,
                "duration_ms": round(duration * 1000, 3) if duration is not None else None,
                "upstream_ms": round(upstream * 1000, 3) if upstream is not None else None,
                "bytes_in": flow.bytes_in,
                "bytes_out": flow.bytes_out,
                "error": flow.error,
            }
        ).decode()

    def request_finished(self, flow: Flow) -> None:
        if self.stream is None:
            if self.logger.isEnabledFor(logging.INFO):
                self.logger.info(self.line(flow))
            return
        self._pending.append(self.line(flow))
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self.flush_interval, self.flush)

    def flush(self) -> None:
        self._handle = None
        if not self._pending or self.stream is None:
            return
        lines, self._pending = self._pending, []
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            logging.getLogger("strangler.facade").exception("writing %d access log lines failed", len(lines))

    async def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.flush()
