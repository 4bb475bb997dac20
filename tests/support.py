"""Helpers the tests share: real servers on loopback ports, waiting on conditions."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from common.postgres import free_port
from common.waiting import TimedOut, wait_until

__all__ = ["free_port", "serve", "wait_for"]


def wait_for(condition: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    try:
        return wait_until(condition, timeout, interval, what=what)
    except TimedOut as exc:
        raise AssertionError(str(exc)) from None


@contextlib.contextmanager
def serve(app: Any, *, host: str = "127.0.0.1", port: int | None = None, **config: Any) -> Iterator[str]:
    """Run an ASGI app under a real uvicorn server in a thread; yield its base URL."""
    port = port or free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="auto", **config)
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=15, what=f"uvicorn on port {port}")
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
