"""Child processes the demo starts: each logs to a file, is waited on until healthy, and is
stopped with its whole process group when the group closes (also on Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common.waiting import TimedOut, wait_until


class ProcessError(Exception):
    """A child process failed to start or to become healthy."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ProcessGroup:
    """Starts children, waits until they answer, stops them all on close."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def run(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> None:
        """Run a short command to completion; raise with its output on failure."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            result = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=self._env(env))
        if result.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise ProcessError(f"{name} failed (exit {result.returncode}); last lines of {log_path}:\n{tail}")

    def start(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = open(log_path, "ab")
        try:
            process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=self._env(env), start_new_session=True
            )
        finally:
            log.close()
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def wait_healthy(self, child: Child, url: str, *, timeout: float = 30.0) -> None:
        def healthy() -> bool:
            if child.process.poll() is not None:
                raise ProcessError(
                    f"{child.name} exited with code {child.process.returncode}; last lines of "
                    f"{child.log_path}:\n{child.tail()}"
                )
            try:
                return httpx.get(url, timeout=1.0).status_code < 500
            except httpx.HTTPError:
                return False

        try:
            wait_until(healthy, timeout, 0.1, what=f"{child.name} at {url}")
        except TimedOut as exc:
            raise ProcessError(f"{child.name} did not answer {url} within {timeout:.0f}s; see {child.log_path}") from exc

    def stop(self, child: Child, timeout: float = 10.0) -> None:
        if child.process.poll() is None:
            try:
                os.killpg(child.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                child.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(child.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.process.wait()
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _env(extra: dict[str, str] | None) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if extra:
            env.update(extra)
        return env


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs `python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]
