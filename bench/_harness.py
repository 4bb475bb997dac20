"""Shared helpers of the bench scripts: tools, processes, wrk runs and their parsing, nginx
configurations, and the rendering of results as tables and ratios.

Pure parts (`parse_wrk_output`, `nginx_*_config`, `Ratio`) are tested in
tests/bench/test_harness.py; the rest is a thin shell over subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

__all__ = [
    "BenchError",
    "Child",
    "Processes",
    "Ratio",
    "WrkResult",
    "WRK_SUMMARY_LUA",
    "check_tools",
    "HotFunction",
    "free_port",
    "install_hint",
    "install_tools",
    "load_average",
    "nginx_command",
    "nginx_proxy_config",
    "nginx_upstream_config",
    "parse_wrk_output",
    "profile_command",
    "profile_table",
    "ratios_table",
    "results_table",
    "run_wrk",
    "signals_as_interrupt",
    "start_nginx",
    "tool_path",
    "top_functions",
    "write_nginx_config",
    "wrk_command",
]

# Debian package that brings each external tool.
TOOL_PACKAGES = {"wrk": "wrk", "nginx": "nginx"}


class BenchError(Exception):
    """A benchmark could not run: a tool is missing, a process did not start, wrk failed."""


# -- tools ---------------------------------------------------------------------------------------


def check_tools(names: Sequence[str]) -> list[str]:
    """The tools of `names` that are not on PATH (nginx also lives in /usr/sbin)."""
    missing = []
    for name in names:
        if shutil.which(name) is None and not Path("/usr/sbin", name).exists():
            missing.append(name)
    return missing


def tool_path(name: str) -> str:
    """Where the external tool `name` is; a BenchError that says how to install it otherwise."""
    found = shutil.which(name)
    if found:
        return found
    if Path("/usr/sbin", name).exists():
        return str(Path("/usr/sbin", name))
    raise BenchError(f"{name} is not installed; {install_hint([name])}")


def install_hint(missing: Sequence[str]) -> str:
    packages = " ".join(TOOL_PACKAGES.get(name, name) for name in missing)
    return (
        f"install it with: sudo apt-get update && sudo apt-get install -y {packages} "
        "(or, as root, `make test-tools` or bench/proxy.py --install)"
    )


def install_tools(missing: Sequence[str]) -> None:
    """Install the Debian packages of `missing` with apt-get; only as root."""
    if os.geteuid() != 0:
        raise BenchError(f"--install needs root to run apt-get; {install_hint(missing)}")
    if shutil.which("apt-get") is None:
        raise BenchError(f"apt-get not found; install {', '.join(missing)} with your package manager.")
    packages = [TOOL_PACKAGES.get(name, name) for name in missing]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for args in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        result = subprocess.run(args, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise BenchError(f"{' '.join(args)} failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")


# -- machine -------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_speed(rounds: int = 3) -> float:
    """Seconds one core takes for a fixed pure-Python loop (the best of `rounds`): on a shared
    host the same machine is slower at some hours than at others, which the load average of
    this machine does not show; figures of runs minutes apart compare only beside this."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return round(best, 3)


def signals_as_interrupt() -> None:
    """Turn SIGTERM and SIGINT into KeyboardInterrupt so `finally` blocks stop every child on
    `kill` and on Ctrl-C (SIGINT too: a shell starting us in the background may ignore it)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


# -- processes -----------------------------------------------------------------------------------


@dataclass
class Child:
    """A started process, its own process group, and the file it logs to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Processes:
    """Starts children in their own process groups; `close()` stops all of them (use `with`)."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        full_env = dict(os.environ, PYTHONUNBUFFERED="1")
        if env:
            full_env.update(env)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                list(args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=full_env, cwd=cwd, start_new_session=True,
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child

    def run(self, name: str, args: Sequence[str], *, env: dict[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 300.0) -> None:
        """Run a short command to completion; raise with its last output lines on failure."""
        child = self.start(name, args, env=env, cwd=cwd)
        try:
            code = child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.stop(child)
            raise BenchError(f"{name} did not finish within {timeout:.0f}s; see {child.log_path}") from exc
        self.children.remove(child)
        if code != 0:
            raise BenchError(f"{name} failed (exit {code}); last lines of {child.log_path}:\n{child.tail()}")

    def wait_http(self, child: Child, url: str, *, timeout: float = 30.0) -> None:
        """Wait until `url` answers with a status below 500 while `child` is alive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise BenchError(
                    f"{child.name} exited with code {child.process.returncode}; last lines of "
                    f"{child.log_path}:\n{child.tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status < 500:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise BenchError(f"{child.name} did not answer {url} within {timeout:.0f}s; last lines:\n{child.tail()}")

    def stop(self, child: Child, timeout: float = 10.0) -> None:
        if child.process.poll() is None:
            self._signal(child, signal.SIGTERM)
            try:
                child.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(child, signal.SIGKILL)
                child.process.wait()
        else:
            # The leader exited; workers it left in the group go too.
            self._signal(child, signal.SIGKILL)
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _signal(child: Child, signum: int) -> None:
        try:
            os.killpg(child.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


@contextmanager
def started(processes: Processes, child: Child) -> Iterator[Child]:
    """Stop `child` when the block ends (the group still stops it on any error)."""
    try:
        yield child
    finally:
        processes.stop(child)


# -- nginx ---------------------------------------------------------------------------------------


def _nginx_main(prefix: Path, name: str, http_block: str, worker_connections: int) -> str:
    temp = prefix / f"{name}-temp"
    return f"""# generated by bench/_harness.py
daemon off;
master_process on;
worker_processes 1;
pid {prefix / (name + '.pid')};
error_log {prefix / (name + '.error.log')} warn;
events {{
    worker_connections {worker_connections};
    multi_accept on;
}}
http {{
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{http_block}}}
"""


def nginx_upstream_config(prefix: Path, ports: Sequence[int], *, body: str = '{"ok":true}',
                          name: str = "upstream", worker_connections: int = 4096) -> str:
    """The cheapest possible upstream: `return 200 <body>` on each port, no access log."""
    if "'" in body:
        raise BenchError(f"the upstream body {body!r} must not contain a single quote.")
    servers = "".join(
        f"""    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
"""
        for port in ports
    )
    return _nginx_main(prefix, name, "    access_log off;\n" + servers, worker_connections)


def nginx_proxy_config(prefix: Path, listen_port: int, upstream: str, *, access_log: Path | None,
                       keepalive: int = 128, name: str = "proxy", worker_connections: int = 4096) -> str:
    """nginx as a reverse proxy to `upstream` (`host:port`) with a keepalive connection pool.

    With `access_log` set, one line per request is written there through a 64 KB buffer flushed
    every second (a common production setting); `None` turns the log off.
    """
    if not re.fullmatch(r"[\w.\-]+:\d+", upstream):
        raise BenchError(f"upstream {upstream!r} must be host:port, for example 127.0.0.1:8080.")
    log = f"access_log {access_log} combined buffer=64k flush=1s;" if access_log else "access_log off;"
    block = f"""    {log}
    upstream backend {{
        server {upstream};
        keepalive {keepalive};
    }}
    server {{
        listen 127.0.0.1:{listen_port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
"""
    return _nginx_main(prefix, name, block, worker_connections)


def nginx_command(prefix: Path, config_path: Path, *, nginx: str = "nginx") -> list[str]:
    """nginx in the foreground on `config_path`; `nginx` is the binary (see `tool_path`)."""
    return [nginx, "-p", f"{prefix}/", "-c", str(config_path), "-e", str(config_path.with_suffix(".error.log"))]


def write_nginx_config(prefix: Path, name: str, config: str) -> Path:
    """Write `config` as `<prefix>/<name>.conf` and create the temp directories it names."""
    config_path = prefix / f"{name}.conf"
    config_path.write_text(config)
    for temp_dir in re.findall(r"_temp_path (\S+);", config):
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
    return config_path


def start_nginx(processes: Processes, prefix: Path, name: str, config: str, url: str) -> Child:
    """Write `config`, start nginx in the foreground on it, wait until `url` answers."""
    config_path = write_nginx_config(prefix, name, config)
    child = processes.start(name, nginx_command(prefix, config_path, nginx=tool_path("nginx")))
    processes.wait_http(child, url, timeout=15)
    return child


# -- wrk -----------------------------------------------------------------------------------------

# wrk's `done` hook prints one JSON line with exact counts and microsecond percentiles, so the
# numbers need no parsing of wrk's rounded, unit-suffixed text.
WRK_SUMMARY_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.2f,"stdev":%.2f,"max":%d,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p999":%d}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: request rate, latency percentiles in milliseconds, errors."""

    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "duration_s": round(self.duration_s, 3), "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3), "p90_ms": round(self.p90_ms, 3), "p99_ms": round(self.p99_ms, 3),
            "mean_ms": round(self.mean_ms, 3), "max_ms": round(self.max_ms, 3), "errors": dict(self.errors),
        }


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_COUNT_SUFFIX = {"": 1.0, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise BenchError(f"cannot read the wrk duration {text!r}; expected e.g. 512.00us, 1.20ms, 2.00s.")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk_output(text: str) -> WrkResult:
    """Read wrk's output: the JSON line of WRK_SUMMARY_LUA when present, else wrk's own text
    (which needs `--latency` for the percentiles)."""
    for line in text.splitlines():
        if line.startswith("WRK_JSON "):
            return _from_json(json.loads(line[len("WRK_JSON "):]))
    return _from_text(text)


def _from_json(data: dict[str, Any]) -> WrkResult:
    duration_s = data["duration_us"] / 1e6
    lat = data["latency_us"]
    errors = {key: int(value) for key, value in data["errors"].items() if value}
    return WrkResult(
        requests=int(data["requests"]), duration_s=duration_s,
        rps=data["requests"] / duration_s if duration_s > 0 else 0.0,
        p50_ms=lat["p50"] / 1000, p90_ms=lat["p90"] / 1000, p99_ms=lat["p99"] / 1000,
        mean_ms=lat["mean"] / 1000, max_ms=lat["max"] / 1000, errors=errors,
    )


def _from_text(text: str) -> WrkResult:
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not total or not rate:
        raise BenchError(f"wrk printed no request summary; its output was:\n{text.strip()[-1000:]}")
    latency = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", text)
    percentiles = {
        int(pct): _duration_ms(value) for pct, value in re.findall(r"^\s+(50|90|99)(?:\.0+)?%\s+(\S+)", text, re.M)
    }
    if set(percentiles) != {50, 90, 99}:
        raise BenchError("wrk printed no latency distribution; run it with --latency.")
    errors: dict[str, int] = {}
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors:
        for key, value in zip(("connect", "read", "write", "timeout"), socket_errors.groups()):
            if int(value):
                errors[key] = int(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        errors["status"] = int(non_2xx.group(1))
    return WrkResult(
        requests=int(total.group(1)), duration_s=_duration_ms(total.group(2) + total.group(3)) / 1000,
        rps=float(rate.group(1)),
        p50_ms=percentiles[50], p90_ms=percentiles[90], p99_ms=percentiles[99],
        mean_ms=_duration_ms(latency.group(1)) if latency else 0.0,
        max_ms=_duration_ms(latency.group(3)) if latency else 0.0,
        errors=errors,
    )


def wrk_command(url: str, *, connections: int, threads: int, duration: float, script: Path | None,
                timeout: float = 5.0, wrk: str = "wrk") -> list[str]:
    """wrk's arguments for one run; `wrk` is the binary (see `tool_path`), not needed to build them."""
    threads = max(1, min(threads, connections))
    args = [
        wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s", "--latency",
    ]
    if script is not None:
        args += ["-s", str(script)]
    return [*args, url]


def run_wrk(url: str, *, connections: int, threads: int, duration: float, script: Path | None) -> WrkResult:
    args = wrk_command(url, connections=connections, threads=threads, duration=duration, script=script,
                       wrk=tool_path("wrk"))
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk against {url} did not finish within {duration + 60:.0f}s.") from exc
    if result.returncode != 0:
        raise BenchError(f"wrk against {url} failed (exit {result.returncode}): {result.stderr.strip()}")
    return parse_wrk_output(result.stdout)


# -- profiles ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HotFunction:
    """A function of a sampled profile: share of samples on top of the stack (self) and anywhere."""

    name: str
    self_pct: float
    total_pct: float

    def as_dict(self) -> dict[str, Any]:
        return {"function": self.name, "self_pct": round(self.self_pct, 2), "total_pct": round(self.total_pct, 2)}


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('func')} ({path})"


def top_functions(collapsed: str, limit: int = 15) -> list[HotFunction]:
    """The hottest functions of py-spy's `--format raw` output (collapsed stacks with counts),
    by self samples; line numbers are folded so a function counts once."""
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(frame) for frame in stack.split(";") if frame.strip()]
        if not frames:
            continue
        samples += count
        # The leaf is the last frame: the process's own stack starts with the thread's entry.
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for name in set(frames):
            total_counts[name] = total_counts.get(name, 0) + count
    if samples == 0:
        return []
    ranked = sorted(self_counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [HotFunction(name, 100 * count / samples, 100 * total_counts[name] / samples) for name, count in ranked]


def profile_command(pid: int, duration: float, output: Path) -> list[str] | None:
    """`py-spy record` of `pid` for `duration` seconds into `output` (raw format), or None when
    py-spy is not installed."""
    found = shutil.which("py-spy") or (str(Path(sys.executable).parent / "py-spy")
                                       if (Path(sys.executable).parent / "py-spy").exists() else None)
    if found is None:
        return None
    return [found, "record", "--pid", str(pid), "--duration", str(max(1, round(duration))), "--rate", "250",
            "--format", "raw", "--output", str(output), "--nonblocking"]


# -- output --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    """A derived number with its target: `value` compared to `target` as `at_least` or `at_most`."""

    name: str
    value: float | None
    unit: str
    target: float | None = None
    direction: str = "at_least"
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None:
            return None
        return self.value >= self.target if self.direction == "at_least" else self.value <= self.target

    def formatted(self, value: float | None) -> str:
        if value is None:
            return "-"
        if self.unit == "%":
            return f"{value * 100:.1f}%"
        if self.unit == "ms":
            return f"{value:+.3f} ms"
        return f"{value:.2f}{self.unit}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "value": self.value, "unit": self.unit, "target": self.target,
            "direction": self.direction, "met": self.met, "note": self.note,
        }


def results_table(title: str, rows: Sequence[dict[str, Any]]) -> Table:
    """Rows of `{"scenario", "upstream", "rate": WrkResult|None, "latency": WrkResult|None}`."""
    table = Table(title=title, title_justify="left")
    table.add_column("upstream")
    table.add_column("scenario")
    table.add_column("req/s", justify="right")
    table.add_column("p50 (c=N)", justify="right")
    table.add_column("p99 (c=N)", justify="right")
    table.add_column("p50 (c=1)", justify="right")
    table.add_column("p99 (c=1)", justify="right")
    table.add_column("errors", justify="right")
    for row in rows:
        rate: WrkResult | None = row.get("rate")
        lat: WrkResult | None = row.get("latency")
        errors = (rate.error_count if rate else 0) + (lat.error_count if lat else 0)
        table.add_row(
            row["upstream"], row["scenario"],
            f"{rate.rps:,.0f}" if rate else "-",
            f"{rate.p50_ms:.2f} ms" if rate else "-",
            f"{rate.p99_ms:.2f} ms" if rate else "-",
            f"{lat.p50_ms:.3f} ms" if lat else "-",
            f"{lat.p99_ms:.3f} ms" if lat else "-",
            str(errors) if errors else "0",
        )
    return table


def ratios_table(title: str, ratios: Sequence[Ratio]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("ratio")
    table.add_column("measured", justify="right")
    table.add_column("target", justify="right")
    table.add_column("met")
    table.add_column("note")
    for ratio in ratios:
        target = "-" if ratio.target is None else (
            ("≥ " if ratio.direction == "at_least" else "≤ ") + ratio.formatted(ratio.target).lstrip("+")
        )
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[ratio.met]
        table.add_row(ratio.name, ratio.formatted(ratio.value), target, met, ratio.note)
    return table


def profile_table(title: str, functions: Sequence[HotFunction]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("function")
    table.add_column("self", justify="right")
    table.add_column("total", justify="right")
    for function in functions:
        table.add_row(function.name, f"{function.self_pct:.1f}%", f"{function.total_pct:.1f}%")
    return table


def python() -> str:
    return sys.executable
