"""Health, a server-sent-events stream and a streaming upload sink (the façade's streaming tests use them)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

MAX_EVENTS = 1000
MAX_INTERVAL = 10.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _number(request: Request, key: str, default: float, upper: float) -> float:
    try:
        value = float(request.query_params.get(key, default))
    except ValueError:
        return default
    return min(max(value, 0.0), upper)


async def stock_events(request: Request) -> Response:
    """GET /api/events/stock?count=5&interval=0.1: `count` SSE events, `interval` seconds apart."""
    count = int(_number(request, "count", 5, MAX_EVENTS))
    interval = _number(request, "interval", 0.1, MAX_INTERVAL)

    async def events() -> AsyncIterator[bytes]:
        for seq in range(count):
            if seq:
                await asyncio.sleep(interval)
            payload = {"seq": seq, "product_id": 1 + seq, "stock": max(0, 100 - seq), "ts": time.time()}
            yield f"id: {seq}\nevent: stock\ndata: {json.dumps(payload)}\n\n".encode()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def upload(request: Request) -> Response:
    """POST /api/uploads: hash the body as it arrives (never held whole); `{"bytes", "sha256"}`."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return JSONResponse({"bytes": size, "sha256": digest.hexdigest()})
