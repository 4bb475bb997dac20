"""Proxy benchmark: wrk against an upstream directly, through nginx, and through the façade.

One run, everything on 127.0.0.1, every run bounded in time:

- upstreams: a cheap one (nginx answering `return 200 '{"ok":true}'`, so the upstream is never
  the bottleneck) and the sample monolith (`python -m monolith serve` on a small seeded database
  on an embedded PostgreSQL), both asked `GET /api/products/1`;
- per upstream: wrk directly, through nginx as a reverse proxy (keepalive pool, buffered access
  log), through the façade with one worker (routing, metrics, access log on) and, on the cheap
  upstream, with two workers;
- each scenario: a high-concurrency run for requests/s and a concurrency-1 run for p50/p99;
- shadow: the façade mirroring 100% of the route to a second cheap upstream vs not mirroring,
  in interleaved rounds with a second shadow-off façade as an A/A control (the run's noise);
  each round's shadow rate is taken against the mean of both shadow-off façades in that round;
- `--clients`: a minimal raw ASGI proxy with httpx.AsyncClient vs aiohttp.ClientSession, to pick
  the façade's HTTP client by numbers.

Prints a table per part, then the ratios against their targets; `--json` prints everything as
JSON on stdout. Everything started is stopped on exit or Ctrl-C; the temp directory is removed.
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from bench._harness import (  # noqa: E402
    WRK_SUMMARY_LUA,
    BenchError,
    HotFunction,
    Processes,
    Ratio,
    WrkResult,
    check_tools,
    free_port,
    install_hint,
    install_tools,
    load_average,
    nginx_proxy_config,
    nginx_upstream_config,
    profile_command,
    profile_table,
    python,
    ratios_table,
    results_table,
    run_wrk,
    signals_as_interrupt,
    start_nginx,
    top_functions,
)

PATH = "/api/products/1"
CHEAP = "cheap"
MONOLITH = "monolith"
OFF, ON = "façade ×1 shadow off", "façade ×1 shadow 100%"
CONTROL = "façade ×1 shadow off, again"  # the A/A control: what a ratio reads when nothing differs


@dataclass(frozen=True)
class Settings:
    """What one run measures and for how long."""

    duration: float
    warmup: float
    connections: int
    threads: int
    monolith: bool
    shadow: bool
    shadow_only: bool
    nginx_access_log: bool
    products: int
    keep: bool
    profile: bool = False
    rounds: int = 30
    control: bool = True
    shadow_cpu: float | None = None


@dataclass
class Scenario:
    upstream: str
    name: str
    rate: WrkResult | None = None
    latency: WrkResult | None = None
    note: str = ""
    profile: list[HotFunction] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream, "scenario": self.name, "note": self.note,
            "rate": self.rate.as_dict() if self.rate else None,
            "latency_c1": self.latency.as_dict() if self.latency else None,
            "profile": [function.as_dict() for function in self.profile],
        }

    def row(self) -> dict[str, Any]:
        return {"upstream": self.upstream, "scenario": self.name, "rate": self.rate, "latency": self.latency}


@dataclass(frozen=True)
class Paired:
    """Round-by-round comparison of a scenario with the one it was interleaved against."""

    against: str
    rate_ratios: list[float]
    p50_deltas: list[float]

    @staticmethod
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def spread(self) -> str:
        if not self.rate_ratios:
            return ""
        return (f"median of {len(self.rate_ratios)} paired rounds; rounds ranged "
                f"{min(self.rate_ratios) * 100:.0f}–{max(self.rate_ratios) * 100:.0f}%")


@dataclass
class Run:
    """Everything one invocation started and measured."""

    settings: Settings
    tmp: Path
    processes: Processes
    console: Console
    script: Path
    scenarios: list[Scenario] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    paired: dict[tuple[str, str], Paired] = field(default_factory=dict)

    def say(self, message: str) -> None:
        self.console.print(f"[dim]{message}[/dim]")

    def measure(self, upstream: str, name: str, url: str, note: str = "", *, pid: int | None = None) -> Scenario:
        """Warm up, then one run at `connections` for the rate and one at c=1 for latency.

        With `--profile` and a `pid`, py-spy samples that process during the rate run."""
        s = self.settings
        self.say(f"  {upstream} / {name}: {url}")
        if s.warmup > 0:
            run_wrk(url, connections=s.connections, threads=s.threads, duration=s.warmup, script=self.script)
        profiler = None
        profile_path = self.tmp / f"profile-{len(self.scenarios)}.txt"
        if s.profile and pid is not None:
            command = profile_command(pid, s.duration, profile_path)
            if command is None:
                self.notes.append("--profile: py-spy not found; install it with `pip install py-spy`")
            else:
                profiler = self.processes.start(f"py-spy-{len(self.scenarios)}", command)
        rate = run_wrk(url, connections=s.connections, threads=s.threads, duration=s.duration, script=self.script)
        hot: list[HotFunction] = []
        if profiler is not None:
            try:
                profiler.process.wait(timeout=30)
            finally:
                self.processes.stop(profiler)
            if profile_path.exists():
                hot = top_functions(profile_path.read_text(errors="replace"))
            else:
                self.notes.append(f"{upstream} / {name}: py-spy wrote no profile; see {profiler.log_path}")
        latency = run_wrk(url, connections=1, threads=1, duration=s.duration, script=self.script)
        scenario = Scenario(upstream, name, rate, latency, note, hot)
        self.scenarios.append(scenario)
        if rate.error_count or latency.error_count:
            self.notes.append(
                f"{upstream} / {name}: wrk counted errors {rate.errors or ''} {latency.errors or ''}".strip()
            )
        return scenario

    def measure_interleaved(self, upstream: str, targets: list[tuple[str, str]], rounds: int = 12,
                            references: dict[str, tuple[str, ...]] | None = None) -> None:
        """Alternate short runs over `targets` (all running) and keep each one's median run, so
        a load change on a shared machine hits both sides of a ratio alike.

        The order rotates every round (A B C, B C A, C A B, ...) so each target runs in each
        position and after each other target alike, and each round's numbers are kept as a pair:
        `paired` holds, per target after the first, the ratio of its rate to the first target's and
        the difference of its c=1 p50, round by round. `references` names, per target, other
        targets to compare it with instead, by their mean in each round (two identical
        references halve the noise of the reference side)."""
        s = self.settings
        each = max(1, round(s.duration / 10))  # wrk takes whole seconds
        for name, url in targets:
            self.say(f"  {upstream} / {name}: {url} ({rounds} interleaved rounds of {each:g} s)")
            if s.warmup > 0:
                run_wrk(url, connections=s.connections, threads=s.threads, duration=s.warmup, script=self.script)
        rates: dict[str, list[WrkResult]] = {name: [] for name, _ in targets}
        latencies: dict[str, list[WrkResult]] = {name: [] for name, _ in targets}
        for round_ in range(rounds):
            shift = round_ % len(targets)
            order = targets[shift:] + targets[:shift]
            for name, url in order:
                rates[name].append(run_wrk(url, connections=s.connections, threads=s.threads, duration=each,
                                           script=self.script))
            for name, url in order:
                latencies[name].append(run_wrk(url, connections=1, threads=1, duration=each, script=self.script))
        first = targets[0][0]
        for name, _ in targets:
            rate = sorted(rates[name], key=lambda r: r.rps)[rounds // 2]
            latency = sorted(latencies[name], key=lambda r: r.p50_ms)[rounds // 2]
            self.scenarios.append(Scenario(upstream, name, rate, latency, f"median of {rounds} interleaved runs"))
            errors = sum(r.error_count for r in rates[name] + latencies[name])
            if errors:
                self.notes.append(f"{upstream} / {name}: wrk counted {errors} errors")
            against = (references or {}).get(name, (first,))
            if name not in against:
                base_rates = [statistics.fmean(rates[ref][i].rps for ref in against) for i in range(rounds)]
                base_p50s = [statistics.fmean(latencies[ref][i].p50_ms for ref in against) for i in range(rounds)]
                self.paired[(upstream, name)] = Paired(
                    " and ".join(against),
                    [b.rps / a for a, b in zip(base_rates, rates[name]) if a],
                    [b.p50_ms - a for a, b in zip(base_p50s, latencies[name])],
                )

    def find(self, upstream: str, name: str) -> Scenario | None:
        for scenario in self.scenarios:
            if scenario.upstream == upstream and scenario.name == name:
                return scenario
        return None


# -- the façade's configuration --------------------------------------------------------------------


def routing_yaml(primary: str, candidate: str, *, shadow: bool, store: Path | None = None,
                 shadow_cpu: float | None = None) -> str:
    """A routing.yaml with one matched route (weights 100/0) and the default route.

    The bench request `GET /api/products/1` matches route `catalog-read` and goes to `monolith`,
    the upstream under test; `catalog` is a second cheap upstream, the shadow target.
    """
    shadow_block = "    shadow: {to: catalog, sample: 100}\n" if shadow else ""
    store_block = f'shadow_store: {{url: "sqlite:///{store}"}}\n' if store else ""
    worker_block = f"shadow_worker: {{cpu: {shadow_cpu:g}}}\n" if shadow and shadow_cpu is not None else ""
    return f"""version: 1
admin:
  token_env: STRANGLER_ADMIN_TOKEN
assignment:
  cookie: strangler_id
  override_header: X-Strangler-Upstream
breaker: {{failures: 5, reset_after: 10s}}
upstreams:
  monolith: {{url: "{primary}", connect_timeout: 1s, timeout: 30s, pool: 256}}
  catalog: {{url: "{candidate}", connect_timeout: 1s, timeout: 10s, pool: 256, sandbox: true}}
routes:
  - id: catalog-read
    match: {{path: /api/products/**, methods: [GET, HEAD]}}
    to: {{monolith: 100, catalog: 0}}
    timeout: 5s
    retries: {{attempts: 2, replay_buffer: 64KB}}
    fallback: monolith
{shadow_block}default: {{to: monolith, timeout: 30s}}
{store_block}{worker_block}"""


def facade_problem(config_text: str, where: Path) -> str | None:
    """None when `facade.config.load_config` accepts the text, else why not."""
    path = where / "probe-routing.yaml"
    path.write_text(config_text)
    try:
        from facade.config import load_config
    except ImportError as exc:
        return f"facade.config is not importable ({exc})"
    try:
        load_config(path)
    except Exception as exc:  # the façade's ConfigError or anything it raises on this input
        return f"{type(exc).__name__}: {exc}"
    return None


def start_facade(run: Run, name: str, upstream_url: str, candidate_url: str, *, workers: int,
                 shadow: bool = False, store: Path | None = None) -> tuple[str, Any]:
    config = run.tmp / f"{name}.routing.yaml"
    config.write_text(routing_yaml(upstream_url, candidate_url, shadow=shadow, store=store,
                                   shadow_cpu=run.settings.shadow_cpu))
    port = free_port()
    child = run.processes.start(
        name,
        [python(), "-m", "scripts", "facade", "serve", "--config", str(config), "--host", "127.0.0.1",
         "--port", str(port), "--workers", str(workers)],
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}{PATH}"
    run.processes.wait_http(child, url, timeout=60)
    return url, child


# -- the parts of a run ----------------------------------------------------------------------------


def measure_upstream(run: Run, upstream: str, base_url: str, candidate_url: str, *, scaling: bool) -> None:
    """direct, nginx proxy, façade ×1 (and ×2 when `scaling`) against one upstream."""
    s = run.settings
    run.measure(upstream, "direct", base_url + PATH)

    port = free_port()
    access_log = run.tmp / f"nginx-proxy-{len(run.scenarios)}.access.log" if s.nginx_access_log else None
    config = nginx_proxy_config(run.tmp, port, base_url.removeprefix("http://"), access_log=access_log,
                                name=f"nginx-proxy-{len(run.scenarios)}")
    proxy = start_nginx(run.processes, run.tmp, f"nginx-proxy-{len(run.scenarios)}", config,
                        f"http://127.0.0.1:{port}{PATH}")
    try:
        run.measure(upstream, "nginx proxy", f"http://127.0.0.1:{port}{PATH}",
                    "keepalive pool, access log " + ("on (buffered)" if access_log else "off"))
    finally:
        run.processes.stop(proxy)

    for workers in (1, 2) if scaling else (1,):
        name = f"façade ×{workers}"
        try:
            url, child = start_facade(run, f"facade-{len(run.scenarios)}", base_url, candidate_url, workers=workers)
        except BenchError as exc:
            run.notes.append(f"{upstream} / {name} skipped: the façade did not start: {exc}")
            return
        try:
            run.measure(upstream, name, url, "routing, metrics, access log on",
                        pid=child.process.pid if workers == 1 else None)
        finally:
            run.processes.stop(child)


def measure_shadow(run: Run, base_url: str, candidate_url: str) -> None:
    """The façade with shadowing off, then mirroring 100% of the route to a second upstream."""
    problem = facade_problem(routing_yaml(base_url, candidate_url, shadow=True, store=run.tmp / "shadow.db"), run.tmp)
    if problem is not None:
        run.notes.append(f"shadow scenarios skipped: routing.yaml with shadow is not accepted yet ({problem})")
        return
    store = run.tmp / "shadow.db"
    names = [OFF, ON] + ([CONTROL] if run.settings.control else [])
    started: list[tuple[str, Any]] = []
    try:
        for i, name in enumerate(names):
            shadow = name == ON
            try:
                started.append(start_facade(run, f"facade-shadow-{i}", base_url, candidate_url,
                                            workers=1, shadow=shadow, store=store))
            except BenchError as exc:
                run.notes.append(f"{name} skipped: the façade did not start: {exc}")
                return
        before = shadow_numbers(started[1][0])
        t0 = time.monotonic()
        if run.settings.profile:
            for name, (url, child) in zip(names, started):
                run.measure(CHEAP, name, url, pid=child.process.pid)
        else:
            # Shadowing is judged against both shadow-off façades (their mean in each round); the
            # control against the first alone, which shows what a ratio reads when nothing differs.
            run.measure_interleaved(CHEAP, [(name, url) for name, (url, _) in zip(names, started)],
                                    rounds=run.settings.rounds, references={ON: tuple(n for n in names if n != ON)})
        run.notes.append(shadow_summary(started[1][0], before, time.monotonic() - t0))
    finally:
        for _, child in started:
            run.processes.stop(child)


def shadow_numbers(url: str) -> dict[str, Any] | str:
    """The shadowing façade's `/_strangler/shadow` (route and worker), or why it could not be read."""
    import httpx

    admin = url.removesuffix(PATH) + "/_strangler/shadow"
    try:
        body = httpx.get(admin, timeout=5).json()
        return {"route": body["routes"]["catalog-read"], "worker": body.get("worker") or {}}
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return f"shadow: could not read {admin}: {exc}"


def shadow_summary(url: str, before: dict[str, Any] | str, elapsed: float) -> str:
    """What the shadowing façade's worker made of the load, and the CPU it used for it."""
    after = shadow_numbers(url)
    if isinstance(after, str):
        return after
    numbers, dropped = after["route"], after["route"]["dropped"]
    text = (
        f"shadow worker: sampled {numbers['sampled']:,}, mirrored {numbers['sent']:,}, compared "
        f"{numbers['compared']:,}, dropped {dropped['queue_full']:,} (queue full) and {dropped.get('cpu_budget', 0):,} "
        f"(over the worker's CPU budget), failed {numbers['failed']:,}, "
        f"timed out {numbers['timed_out']:,}"
    )
    if isinstance(before, dict) and "cpu_seconds" in after["worker"]:
        cpu = after["worker"]["cpu_seconds"] - before["worker"].get("cpu_seconds", 0.0)
        jobs = numbers["sent"] - before["route"]["sent"]
        text += (
            # The worker also works through its queue while the other façade is measured.
            f"; worker CPU {cpu:.2f} s in the {elapsed:.0f} s measured ({100 * cpu / elapsed:.1f}% of a core, budget "
            f"{after['worker'].get('cpu_budget')}%)" + (f", {1e6 * cpu / jobs:.0f} µs per mirrored request" if jobs else "")
        )
    return text


def start_monolith(run: Run) -> tuple[str, Callable[[], None]]:
    """A seeded monolith on an embedded PostgreSQL; returns its base URL and how to stop the database."""
    from common.postgres import EmbeddedPostgres

    if not (ROOT / "monolith" / "__main__.py").exists():
        raise BenchError("monolith/__main__.py does not exist yet, so `python -m monolith` cannot run")
    pg = EmbeddedPostgres(run.tmp / "pg" / "data", ephemeral=True).start()
    try:
        url = pg.create_database("bench_monolith")
        run.processes.run("monolith-migrate", [python(), "-m", "monolith", "migrate", "--database-url", url], cwd=ROOT)
        run.processes.run(
            "monolith-seed",
            [python(), "-m", "monolith", "seed", "--database-url", url, "--products", str(run.settings.products)],
            cwd=ROOT,
        )
        port = free_port()
        child = run.processes.start(
            "monolith", [python(), "-m", "monolith", "serve", "--database-url", url, "--port", str(port)], cwd=ROOT
        )
        run.processes.wait_http(child, f"http://127.0.0.1:{port}{PATH}", timeout=60)
    except BaseException:
        pg.stop()
        raise
    return f"http://127.0.0.1:{port}", pg.stop


def proxy_ratios(run: Run) -> list[Ratio]:
    ratios: list[Ratio] = []

    def rate(upstream: str, name: str) -> float | None:
        found = run.find(upstream, name)
        return found.rate.rps if found and found.rate else None

    def p50(upstream: str, name: str) -> float | None:
        found = run.find(upstream, name)
        return found.latency.p50_ms if found and found.latency else None

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def sub(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    for upstream, targets in ((CHEAP, True), (MONOLITH, False)):
        if run.find(upstream, "direct") is None:
            continue
        label = "cheap" if upstream == CHEAP else "monolith"
        ratios.append(Ratio(
            f"{label}: façade ×1 / nginx req/s", div(rate(upstream, "façade ×1"), rate(upstream, "nginx proxy")), "%",
            0.10 if targets else None, note="" if targets else "monolith-bound; for reference",
        ))
        ratios.append(Ratio(
            f"{label}: added p50 at c=1, façade vs direct",
            sub(p50(upstream, "façade ×1"), p50(upstream, "direct")), "ms", 0.3 if targets else None, "at_most",
        ))
        ratios.append(Ratio(
            f"{label}: added p50 at c=1, nginx vs direct",
            sub(p50(upstream, "nginx proxy"), p50(upstream, "direct")), "ms", note="reference",
        ))
        if run.find(upstream, "façade ×2"):
            ratios.append(Ratio(
                f"{label}: façade ×2 / ×1 req/s", div(rate(upstream, "façade ×2"), rate(upstream, "façade ×1")), "×",
                note="2 cores shared with wrk and the upstream: the ceiling is below 2",
            ))
    if run.find(CHEAP, ON):
        pair = run.paired.get((CHEAP, ON))
        if pair is not None:
            against = "; against both shadow-off façades, their mean per round" if CONTROL in pair.against else ""
            ratios.append(Ratio("shadow 100% / off req/s", pair.median(pair.rate_ratios), "%", 0.90,
                                note=pair.spread() + against))
            ratios.append(Ratio("shadow: added p50 at c=1", pair.median(pair.p50_deltas), "ms", 0.2, "at_most",
                                note=f"median of {len(pair.p50_deltas)} paired rounds"))
        else:
            ratios.append(Ratio("shadow 100% / off req/s", div(rate(CHEAP, ON), rate(CHEAP, OFF)), "%", 0.90))
            ratios.append(Ratio("shadow: added p50 at c=1", sub(p50(CHEAP, ON), p50(CHEAP, OFF)), "ms", 0.2, "at_most"))
        control = run.paired.get((CHEAP, CONTROL))
        if control is not None:
            ratios.append(Ratio("A/A control: off again / off req/s", control.median(control.rate_ratios), "%",
                                note="two identical façades: the noise of this run; " + control.spread()))
    return ratios


# -- the HTTP client micro-benchmark ---------------------------------------------------------------

Asgi = Callable[..., Any]
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host", b"content-length",
})


def client_proxy_app(kind: str, upstream: str) -> Asgi:
    """A minimal raw ASGI reverse proxy using `kind` as its HTTP client, or `none`: answers itself.

    Kinds: `httpx` (httpx.AsyncClient), `aiohttp` (aiohttp.ClientSession), `facade-h1` and
    `facade-aiohttp` (the façade's own `UpstreamClient` implementations from facade/client.py).
    Same work for every client: copy the method, path, query and end-to-end headers, stream the
    response back. No routing, metrics or logs: this isolates the client's cost.
    """
    state: dict[str, Any] = {}

    async def lifespan(receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if kind == "httpx":
                    import httpx

                    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
                    state["client"] = httpx.AsyncClient(base_url=upstream, limits=limits, timeout=30.0)
                elif kind == "aiohttp":
                    import aiohttp

                    connector = aiohttp.TCPConnector(limit=256, ttl_dns_cache=None)
                    state["client"] = aiohttp.ClientSession(
                        upstream, connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
                    )
                elif kind.startswith("facade-"):
                    from facade.client import AiohttpClient, H1Client, Upstream
                    from facade.config import UpstreamConfig

                    state["client"] = H1Client() if kind == "facade-h1" else AiohttpClient()
                    config = UpstreamConfig.model_validate({"name": "bench", "url": upstream, "pool": 256})
                    state["upstream"] = Upstream("bench", config)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                client = state.get("client")
                if client is not None:
                    await (client.close() if kind == "aiohttp" else client.aclose())
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def read_body(receive: Any) -> bytes:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read_body(receive)
        if kind == "none":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
            await send({"type": "http.response.body", "body": b'{"ok":true}'})
            return
        headers = [(k, v) for k, v in scope["headers"] if k not in HOP_BY_HOP]
        target = scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        client = state["client"]
        if kind.startswith("facade-"):
            reply = await client.request(state["upstream"], scope["method"], target.encode("latin-1"), headers, body or None)
            try:
                out = [(k, v) for k, v in reply.headers if k.lower() not in HOP_BY_HOP]
                await send({"type": "http.response.start", "status": reply.status, "headers": out})
                while chunk := await reply.read():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            except BaseException:
                reply.close(reuse=False)
                raise
            reply.close(reuse=True)
        elif kind == "httpx":
            request = client.build_request(scope["method"], target, headers=headers, content=body)
            response = await client.send(request, stream=True)
            try:
                out = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
                await send({"type": "http.response.start", "status": response.status_code, "headers": out})
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                await response.aclose()
        else:
            async with client.request(
                scope["method"], target, headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                data=body or None, allow_redirects=False,
            ) as response:
                out = [(k, v) for k, v in response.raw_headers if k.lower() not in HOP_BY_HOP]
                await send({"type": "http.response.start", "status": response.status, "headers": out})
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})

    return app


def serve_client_proxy(kind: str, upstream: str, port: int) -> None:
    import uvicorn

    uvicorn.run(client_proxy_app(kind, upstream), host="127.0.0.1", port=port, log_level="warning",
                access_log=False, lifespan="on", loop="uvloop", http="httptools")


def measure_clients(run: Run, base_url: str) -> list[Ratio]:
    run.measure(CHEAP, "direct", base_url + PATH)
    port = free_port()
    config = nginx_proxy_config(run.tmp, port, base_url.removeprefix("http://"), access_log=None, name="nginx-proxy")
    proxy = start_nginx(run.processes, run.tmp, "nginx-proxy", config, f"http://127.0.0.1:{port}{PATH}")
    try:
        run.measure(CHEAP, "nginx proxy", f"http://127.0.0.1:{port}{PATH}", "access log off")
    finally:
        run.processes.stop(proxy)
    labels = {
        "none": "raw ASGI, no upstream", "httpx": "raw ASGI + httpx", "aiohttp": "raw ASGI + aiohttp",
        "facade-aiohttp": "raw ASGI + façade AiohttpClient", "facade-h1": "raw ASGI + façade H1Client",
    }
    try:
        import facade.client  # noqa: F401
    except ImportError as exc:
        run.notes.append(f"the façade's own clients are not measured: facade.client is not importable ({exc})")
        del labels["facade-aiohttp"], labels["facade-h1"]
    for kind, label in labels.items():
        port = free_port()
        child = run.processes.start(
            f"client-{kind}",
            [python(), str(Path(__file__).resolve()), "--serve-client", kind, "--upstream", base_url, "--port", str(port)],
            cwd=ROOT,
        )
        try:
            url = f"http://127.0.0.1:{port}{PATH}"
            run.processes.wait_http(child, url, timeout=30)
            run.measure(CHEAP, label, url, "one uvicorn worker, uvloop + httptools")
        finally:
            run.processes.stop(child)

    def rate(name: str) -> float | None:
        found = run.find(CHEAP, name)
        return found.rate.rps if found and found.rate else None

    def p50(name: str) -> float | None:
        found = run.find(CHEAP, name)
        return found.latency.p50_ms if found and found.latency else None

    nginx_rate, httpx_rate, direct_p50 = rate("nginx proxy"), rate(labels["httpx"]), p50("direct")
    ratios = []
    for kind, label in labels.items():
        if kind == "none":
            continue
        value, latency = rate(label), p50(label)
        ratios.append(Ratio(f"{label} / nginx req/s", value / nginx_rate if value and nginx_rate else None, "%"))
        if kind != "httpx":
            ratios.append(Ratio(f"{label} / httpx req/s", value / httpx_rate if value and httpx_rate else None, "×"))
        ratios.append(Ratio(
            f"{label}: added p50 at c=1 vs direct",
            latency - direct_p50 if latency is not None and direct_p50 is not None else None, "ms",
        ))
    return ratios


# -- command line ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import os

    return {
        "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in load_average()],
        "python": platform.python_version(), "platform": platform.platform(),
    }


def main(
    duration: float = typer.Option(10.0, help="Seconds of each measured wrk run (rate and c=1 runs each)."),
    warmup: float = typer.Option(1.0, help="Seconds of unmeasured load before each scenario (fills pools)."),
    connections: int = typer.Option(64, help="wrk connections for the request-rate runs."),
    threads: int = typer.Option(2, help="wrk threads for the request-rate runs (c=1 runs use one)."),
    quick: bool = typer.Option(False, "--quick", help="Short runs (3 s, no warm-up) for a smoke check."),
    clients: bool = typer.Option(False, "--clients", help="Only the HTTP client micro-benchmark: raw ASGI proxy with httpx vs aiohttp."),
    monolith: bool = typer.Option(True, "--monolith/--no-monolith", help="Also measure with the sample monolith as upstream."),
    shadow: bool = typer.Option(True, "--shadow/--no-shadow", help="Also measure the façade shadowing 100% vs not."),
    shadow_only: bool = typer.Option(False, "--shadow-only", help="Only the shadow part (façade shadowing 100% vs off, cheap upstream)."),
    rounds: int = typer.Option(30, min=2, help="Interleaved rounds of the shadow part (each a rate and a c=1 run per façade)."),
    shadow_cpu: float = typer.Option(None, "--shadow-cpu", min=1, max=100, help="The shadowing façade's shadow_worker.cpu (percent of one core); default: the façade's default."),
    control: bool = typer.Option(True, "--control/--no-control", help="Interleave a second shadow-off façade in the shadow part: its ratio to the first shows the run's noise."),
    nginx_access_log: bool = typer.Option(True, "--nginx-access-log/--no-nginx-access-log", help="nginx proxy writes a buffered access log, as the façade writes its own."),
    products: int = typer.Option(200, help="Products seeded into the monolith's database."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout (tables go to stderr)."),
    install: bool = typer.Option(False, "--install", help="Install missing wrk/nginx with apt-get (needs root)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temp directory (configs, logs) and print its path."),
    profile: bool = typer.Option(False, "--profile", help="Sample each one-worker façade with py-spy during its rate run and print the hottest functions (numbers are then slightly lower)."),
    serve_client: str = typer.Option("", "--serve-client", hidden=True),
    upstream: str = typer.Option("", "--upstream", hidden=True),
    port: int = typer.Option(0, "--port", hidden=True),
) -> None:
    """Measure the façade against nginx and direct access with wrk, and print the ratios."""
    if serve_client:
        serve_client_proxy(serve_client, upstream, port)
        return
    console = Console(stderr=json_output)
    if not console.is_terminal:
        console = Console(stderr=json_output, width=150)
    missing = check_tools(["wrk", "nginx"])
    if missing and install:
        try:
            install_tools(missing)
        except BenchError as exc:
            console.print(f"[red]FAILED:[/red] {exc}")
            raise typer.Exit(1) from exc
        missing = check_tools(["wrk", "nginx"])
    if missing:
        console.print(f"[red]FAILED:[/red] {', '.join(missing)} not found; {install_hint(missing)}")
        raise typer.Exit(1)
    if quick:
        duration, warmup = min(duration, 3.0), 0.0
    settings = Settings(
        duration=duration, warmup=warmup, connections=connections, threads=threads, monolith=monolith and not shadow_only,
        shadow=shadow or shadow_only, shadow_only=shadow_only, rounds=rounds, control=control, shadow_cpu=shadow_cpu, nginx_access_log=nginx_access_log, products=products, keep=keep, profile=profile,
    )
    signals_as_interrupt()
    try:
        report = execute(settings, console, clients_only=clients)
    except BenchError as exc:
        console.print(f"[red]FAILED:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; everything started was stopped[/yellow]")
        raise typer.Exit(130) from None
    if json_output:
        print(json.dumps(report, indent=2))


def execute(settings: Settings, console: Console, *, clients_only: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="strangler-bench-"))
    tmp.chmod(0o755)  # nginx workers may run as another user and read nothing here, but traverse
    script = tmp / "summary.lua"
    script.write_text(WRK_SUMMARY_LUA)
    before = machine()
    console.print(
        f"[bold]bench/proxy.py[/bold]: {settings.duration:g} s per run, {settings.connections} connections "
        f"/ {settings.threads} threads (rate), 1 connection (latency); {before['cpus']} CPUs, "
        f"load average {before['load_average']}"
    )
    ratios: list[Ratio] = []
    stop_database: Callable[[], None] | None = None
    try:
        with Processes(tmp / "logs") as processes:
            run = Run(settings, tmp, processes, console, script)
            ports = [free_port(), free_port()]
            start_nginx(processes, tmp, "upstream", nginx_upstream_config(tmp, ports), f"http://127.0.0.1:{ports[0]}/")
            cheap, candidate = (f"http://127.0.0.1:{p}" for p in ports)
            if clients_only:
                console.print("[bold]HTTP client micro-benchmark[/bold] (cheap upstream)")
                ratios = measure_clients(run, cheap)
                title = "raw ASGI proxy: HTTP clients"
            else:
                if not settings.shadow_only:
                    console.print("[bold]cheap upstream[/bold]")
                    measure_upstream(run, CHEAP, cheap, candidate, scaling=True)
                if settings.shadow:
                    console.print("[bold]shadow[/bold]")
                    measure_shadow(run, cheap, candidate)
                if settings.monolith:
                    console.print("[bold]monolith upstream[/bold]")
                    try:
                        monolith_url, stop_database = start_monolith(run)
                    except BenchError as exc:
                        run.notes.append(f"monolith scenarios skipped: {exc}")
                    else:
                        measure_upstream(run, MONOLITH, monolith_url, candidate, scaling=False)
                ratios = proxy_ratios(run)
                title = "proxy benchmark"
            after = machine()
            console.print(results_table(f"{title}: {settings.duration:g} s per run, c={settings.connections}", [s.row() for s in run.scenarios]))
            console.print(ratios_table("ratios", ratios))
            for scenario in run.scenarios:
                if scenario.profile:
                    console.print(profile_table(
                        f"hottest functions (py-spy, share of samples): {scenario.upstream} / {scenario.name}",
                        scenario.profile,
                    ))
            for note in run.notes:
                console.print(f"note: {note}")
            console.print(f"load average before {before['load_average']}, after {after['load_average']}")
            return {
                "machine": {**before, "load_average_after": after["load_average"]},
                "settings": settings.__dict__,
                "scenarios": [s.as_dict() for s in run.scenarios],
                "ratios": [r.as_dict() for r in ratios],
                "notes": run.notes,
            }
    finally:
        if stop_database is not None:
            stop_database()
        if settings.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
