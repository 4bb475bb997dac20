"""One JSON line per request on the `strangler.access` logger, as an addon.

Fields: ts (ISO 8601 UTC), request_id, method, path (raw, with the query string), route,
upstream, status, duration_ms, upstream_ms, bytes_in, bytes_out, error. Nothing is formatted when
the logger would drop the record, so a disabled access log costs one level check.
"""

from __future__ import annotations

import json
import logging
import time

from facade.addons import Flow

__all__ = ["ACCESS_LOGGER", "AccessLog"]

ACCESS_LOGGER = "strangler.access"


class AccessLog:
    """Addon writing the access log line when a flow finishes."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def request_finished(self, flow: Flow) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        now = time.time()
        path = flow.raw_path.decode("latin-1")
        if flow.query_string:
            path += "?" + flow.query_string.decode("latin-1")
        line = self._dumps(
            {
                "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
                "request_id": flow.request_id,
                "method": flow.method,
                "path": path,
                "route": flow.route.id,
                "upstream": flow.upstream,
                "status": flow.status,
                "duration_ms": round(flow.duration * 1000, 3) if flow.duration is not None else None,
                "upstream_ms": round(flow.upstream_duration * 1000, 3) if flow.upstream_duration is not None else None,
                "bytes_in": flow.bytes_in,
                "bytes_out": flow.bytes_out,
                "error": flow.error,
            }
        )
        logger.info(line)
