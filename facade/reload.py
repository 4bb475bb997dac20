"""Live reload of `routing.yaml`: watch the file, parse and validate all of it, swap one reference.

Triggers: a change of the file (polled: mtime, size and inode, debounced until it holds still),
`POST /_strangler/reload`, and SIGHUP. A reload reads the file once, hashes exactly the text it
parses, validates it, builds a new route table and hands it to `install` (the proxy's `swap`).
On any problem the table in force keeps serving and the problems (`file:line:col: message`) are
kept as `last_error` until a later reload succeeds. After a successful swap, `configure` hands the
new table to the addons. Parsing runs on a worker thread so requests
keep flowing while a large file is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from facade.config import ConfigError, FacadeConfig, Problem, parse_config
from facade.routing import RouteTable

__all__ = ["ReloadResult", "Reloader", "file_signature", "load_table"]

log = logging.getLogger("strangler.facade")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def load_table(path: Path, env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time) -> tuple[RouteTable, str, float]:
    """Read, validate and compile the file: (table, content hash, load time). Raises `ConfigError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(str(path), 1, 1, f"cannot read the file: {exc.strerror or exc}.")]) from exc
    digest = hashlib.sha256(raw).hexdigest()[:12]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(str(path), 1, 1, f"the file is not UTF-8 text ({exc.reason}).")]) from exc
    config: FacadeConfig = parse_config(text, str(path), env=env)
    loaded_at = clock()
    # The version names the content and when it was loaded: a reload of the same bytes is visible too.
    version = f"{digest}-{int(loaded_at * 1000):x}"
    return RouteTable.build(config, version), digest, loaded_at


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """What the watcher compares: mtime, size and inode (None when the file cannot be read)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What one reload attempt did."""

    ok: bool
    version: str
    problems: tuple[Problem, ...] = ()
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "version": self.version,
            "at": _iso(self.at),
            "problems": [str(problem) for problem in self.problems],
            "errors": [problem.as_dict() for problem in self.problems],
        }


class Reloader:
    """Owns the current table's version and the last error; reloads on demand or on change."""

    def __init__(
        self,
        path: Path,
        table: RouteTable,
        content_hash: str,
        loaded_at: float,
        *,
        install: Callable[[RouteTable], None],
        configure: Callable[[RouteTable], Awaitable[None]] | None = None,
        env: Mapping[str, str] | None = None,
        on_result: list[Callable[[ReloadResult], None]] | None = None,
        interval: float = 0.5,
        debounce: float = 0.2,
        signature: tuple[int, int, int] | None = None,
    ) -> None:
        self.path = path
        self.table = table
        self.content_hash = content_hash
        self.loaded_at = loaded_at
        self.install = install
        self.configure = configure
        self.env = env
        self.on_result = list(on_result or [])
        self.interval = interval
        self.debounce = debounce
        self.last_error: ReloadResult | None = None
        self.last_result: ReloadResult | None = None
        self.reloads = 0
        self._lock = asyncio.Lock()
        # `signature`: the file's as taken before `table` was read, so a change made while it was
        # being read is still seen as a change.
        self._signature = signature if signature is not None else self._stat()
        self._task: asyncio.Task[None] | None = None
        self._signal_installed = False
        self._pending: set[asyncio.Task[Any]] = set()

    @property
    def version(self) -> str:
        return self.table.version

    def status(self) -> dict[str, Any]:
        """What the admin API shows about the config in force."""
        return {
            "version": self.table.version,
            "content_hash": self.content_hash,
            "loaded_at": _iso(self.loaded_at),
            "file": str(self.path),
            "last_error": self.last_error.as_dict() if self.last_error is not None else None,
            "last_reload": self.last_result.as_dict() if self.last_result is not None else None,
        }

    def _stat(self) -> tuple[int, int, int] | None:
        return file_signature(self.path)

    async def reload(self, trigger: str = "api") -> ReloadResult:
        """Parse, validate and install the file now; keep the table in force on any problem."""
        async with self._lock:
            self._signature = self._stat()
            try:
                table, digest, loaded_at = await asyncio.to_thread(load_table, self.path, self.env)
            except ConfigError as exc:
                result = ReloadResult(False, self.table.version, tuple(exc.problems))
                self.last_error = result
                log.error(
                    "reload (%s) of %s rejected; still serving version %s:\n%s",
                    trigger, self.path, self.table.version, "\n".join(str(problem) for problem in exc.problems),
                )
            except Exception as exc:  # a bug in building the table must not stop the watcher
                problem = Problem(str(self.path), 1, 1, f"the routing table could not be built: {exc!r}")
                result = ReloadResult(False, self.table.version, (problem,))
                self.last_error = result
                log.exception("reload (%s) of %s failed; still serving version %s", trigger, self.path, self.table.version)
            else:
                self.install(table)
                self.table, self.content_hash, self.loaded_at = table, digest, loaded_at
                if self.configure is not None:
                    await self.configure(table)  # the addons follow the new table (never raises)
                self.last_error = None
                self.reloads += 1
                result = ReloadResult(True, table.version, at=loaded_at)
                log.info("reload (%s) of %s: now serving version %s", trigger, self.path, table.version)
            self.last_result = result
            for callback in self.on_result:
                callback(result)
            return result

    # -- triggers ------------------------------------------------------------------------------

    def start(self, *, watch: bool = True) -> None:
        """Start watching the file and listen for SIGHUP (when running in the main thread)."""
        loop = asyncio.get_running_loop()
        if watch:
            self._task = loop.create_task(self._watch(), name="strangler-config-watch")
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
                self._signal_installed = True

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def stop(self) -> None:
        if self._signal_installed:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._signal_installed = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in list(self._pending):
            with contextlib.suppress(Exception):
                await pending

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            signature = self._stat()
            if signature == self._signature or signature is None:
                continue
            # Debounce: editors write in several steps; wait until the file holds still.
            while True:
                await asyncio.sleep(self.debounce)
                settled = self._stat()
                if settled == signature:
                    break
                signature = settled
            if signature is not None and signature != self._signature:
                try:
                    await self.reload("file change")
                except Exception:
                    log.exception("reloading %s after a change failed", self.path)
