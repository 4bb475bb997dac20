"""`strangler demo`: the migration journey on the embedded default.

Starts a private PostgreSQL, the sample monolith, the extracted catalog service and the façade;
seeds data; mirrors catalog reads to the new service and writes the shadow comparison report
(first with a deliberate, documented discrepancy switched on — `serve --demo-discrepancy` of the
catalog service — then with it fixed); then sends traffic through the façade while shifting
catalog reads 0 → 10 → 50 → 100 % with `routes shift`, printing requests per upstream at each
step. Everything it started is stopped on exit or Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from scripts.postgres import free_port, resolve_server
from scripts.processes import ProcessError, ProcessGroup, python_module

STEPS = (0, 10, 50, 100)
ROUTE_ID = "catalog-read"


@dataclass
class StepResult:
    weight: int
    per_upstream: dict[str, int]
    errors: int
    clients: int

    @property
    def total(self) -> int:
        return sum(self.per_upstream.values())


@dataclass
class ShadowRound:
    label: str
    discrepancy: bool
    report_path: str
    compared: int
    mismatch_rate: float
    mismatch_rate_raw: float
    real_fields: list[str]
    noise_fields: list[str]


@dataclass
class DemoEnv:
    """Where everything the demo started can be reached."""

    work_dir: Path
    group: ProcessGroup
    monolith_url: str = ""
    catalog_url: str = ""
    facade_url: str = ""
    legacy_db: str = ""
    catalog_db: str = ""
    routing_path: Path = field(default_factory=Path)
    results: list[StepResult] = field(default_factory=list)
    shadow_rounds: list[ShadowRound] = field(default_factory=list)
    catalog_port: int = 0


def demo(
    database_url: str = typer.Option(
        None, "--database-url", envvar="STRANGLER_DATABASE_URL",
        help="Use this PostgreSQL server (needs wal_level=logical) instead of the embedded one.",
    ),
    products: int = typer.Option(5000, help="Products to seed into the monolith."),
    requests_per_step: int = typer.Option(400, help="Requests sent through the façade at each weight step."),
    work_dir: Path = typer.Option(Path(".strangler/demo"), help="Where the demo keeps its files and logs."),
    discrepancy: bool = typer.Option(
        True, "--discrepancy/--no-discrepancy",
        help="Start the catalog service with its deliberate demo bug (prices rounded to whole units, "
        "attributes missing) for the first shadow round, so the report has something to find.",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the step results as JSON."),
) -> None:
    """Run the whole journey on the embedded PostgreSQL: monolith, catalog service, façade,
    traffic, and a stepwise shift of catalog reads with `routes shift`."""
    console = Console(stderr=json_output)
    try:
        result = run_demo(
            database_url=database_url, products=products, requests_per_step=requests_per_step,
            work_dir=work_dir, console=console, discrepancy=discrepancy,
        )
    except ProcessError as exc:
        console.print(f"[red]FAILED:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; everything the demo started has been stopped.[/yellow]")
        raise typer.Exit(130) from None
    if json_output:
        typer.echo(json.dumps({
            "shadow": [r.__dict__ for r in result.shadow_rounds],
            "steps": [r.__dict__ for r in result.results],
        }, indent=2))


def run_demo(
    *, database_url: str | None, products: int, requests_per_step: int, work_dir: Path, console: Console,
    discrepancy: bool = True,
) -> DemoEnv:
    work_dir = work_dir.absolute()
    if work_dir.exists():
        shutil.rmtree(work_dir / "logs", ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    with _postgres(database_url, work_dir, console) as server, ProcessGroup(work_dir / "logs") as group:
        env = DemoEnv(work_dir=work_dir, group=group)
        # A fresh pair of databases each run, so the demo always starts from the same point.
        stamp = time.strftime("%Y%m%d%H%M%S")
        env.legacy_db = server.create_database(f"demo_legacy_{stamp}")
        env.catalog_db = server.create_database(f"demo_catalog_{stamp}")
        _start_services(env, products, console, discrepancy=discrepancy)
        _shadow_round(env, console, requests_per_step, "with-discrepancy" if discrepancy else "clean", discrepancy)
        if discrepancy:
            console.print("[cyan]→[/cyan] fixing the catalog service (restarting it without the demo bug)")
            _restart_catalog(env, discrepancy=False)
            _shadow_round(env, console, requests_per_step, "fixed", False)
        _shift_reads(env, requests_per_step, console)
        _print_summary(env, console)
        return env


@contextmanager
def _postgres(database_url: str | None, work_dir: Path, console: Console) -> Iterator[object]:
    with console.status("Starting PostgreSQL (wal_level=logical)…"):
        server = resolve_server(database_url, work_dir / "postgres")
    console.print(f"[green]✓[/green] PostgreSQL at {server.url()}")
    try:
        yield server
    finally:
        server.stop()


def _start_services(env: DemoEnv, products: int, console: Console, *, discrepancy: bool) -> None:
    group = env.group
    with console.status(f"Creating and seeding the monolith's database ({products} products)…"):
        group.run("monolith-migrate", python_module("monolith", "migrate", "--database-url", env.legacy_db))
        group.run(
            "monolith-seed",
            python_module("monolith", "seed", "--database-url", env.legacy_db, "--products", str(products)),
        )
    console.print(f"[green]✓[/green] monolith database seeded with {products} products")

    monolith_port, catalog_port, facade_port = free_port(), free_port(), free_port()
    env.monolith_url = f"http://127.0.0.1:{monolith_port}"
    env.catalog_url = f"http://127.0.0.1:{catalog_port}"
    env.facade_url = f"http://127.0.0.1:{facade_port}"

    monolith = group.start(
        "monolith",
        python_module("monolith", "serve", "--database-url", env.legacy_db, "--port", str(monolith_port)),
    )
    with console.status("Creating the catalog service's store (alembic upgrade head)…"):
        group.run("catalog-migrate", python_module("extracted.catalog", "migrate", "--database-url", env.catalog_db))
        group.run(
            "catalog-copy",
            python_module(
                "extracted.catalog", "copy-from-legacy", "--legacy-url", env.legacy_db, "--database-url", env.catalog_db
            ),
        )
    env.catalog_port = catalog_port
    group.wait_healthy(monolith, f"{env.monolith_url}/healthz")
    _restart_catalog(env, discrepancy=discrepancy)
    console.print(f"[green]✓[/green] monolith at {env.monolith_url}, catalog service at {env.catalog_url}")

    env.routing_path = env.work_dir / "routing.yaml"
    shutil.copyfile(Path(__file__).resolve().parent.parent / "routing.yaml", env.routing_path)
    with open(env.routing_path, "a", encoding="utf-8") as routing:
        routing.write(f'\n# Added by the demo: its own shadow store.\nshadow_store: {{url: "sqlite:///{env.work_dir}/shadow.db"}}\n')
    facade = group.start(
        "facade",
        python_module("scripts", "facade", "serve", "--config", str(env.routing_path), "--port", str(facade_port)),
        env={"MONOLITH_URL": env.monolith_url, "CATALOG_URL": env.catalog_url},
    )
    group.wait_healthy(facade, f"{env.facade_url}/_strangler/health")
    console.print(f"[green]✓[/green] façade at {env.facade_url} (config {env.routing_path})")


def _restart_catalog(env: DemoEnv, *, discrepancy: bool) -> None:
    for child in list(env.group.children):
        if child.name == "catalog":
            env.group.stop(child)
    args = [
        "extracted.catalog", "serve", "--database-url", env.catalog_db, "--port", str(env.catalog_port),
        "--monolith-url", env.monolith_url,
    ]
    if discrepancy:
        args.append("--demo-discrepancy")
    catalog = env.group.start("catalog", python_module(*args))
    env.group.wait_healthy(catalog, f"{env.catalog_url}/healthz")


def _shadow_numbers(env: DemoEnv) -> dict[str, object]:
    body = httpx.get(f"{env.facade_url}/_strangler/shadow", timeout=5).json()
    numbers: dict[str, object] = body["routes"].get(ROUTE_ID, {})
    numbers["store"] = body.get("store") or {}
    return numbers


def _shadow_settled(numbers: dict[str, object]) -> bool:
    """Every sampled request has been compared (or counted as failed/dropped) and stored."""
    dropped = numbers.get("dropped") or {}
    assert isinstance(dropped, dict)
    done = sum(int(numbers.get(k, 0) or 0) for k in ("compared", "timed_out", "failed", "compare_errors"))
    done += sum(int(v) for v in dropped.values())
    store = numbers.get("store") or {}
    assert isinstance(store, dict)
    return done >= int(numbers.get("sampled", 0) or 0) and int(store.get("pending", 0) or 0) == 0


def _shadow_round(env: DemoEnv, console: Console, requests: int, label: str, discrepancy: bool) -> None:
    """Catalog reads served by the monolith, mirrored to the catalog service and compared."""
    from scripts.shadow_cmd import write_report

    started = time.time()
    with console.status(f"Shadowing {requests} catalog reads to the catalog service ({label})…"):
        _send_traffic(env, 0, requests)
        deadline = time.monotonic() + 60
        while not _shadow_settled(_shadow_numbers(env)) and time.monotonic() < deadline:
            time.sleep(0.2)
    report_path = env.work_dir / f"shadow-report-{label}.html"
    since = f"{int(time.time() - started) + 1}s"
    report = write_report(f"sqlite:///{env.work_dir}/shadow.db", report_path, since=since, route=ROUTE_ID)
    real: list[str] = []
    noise: list[str] = []
    for route in report.routes:
        for endpoint in route.endpoints:
            for f in endpoint.fields:
                (real if f.real else noise).append(f"{endpoint.endpoint} {f.field}")
    env.shadow_rounds.append(ShadowRound(
        label, discrepancy, str(report_path), report.compared, report.mismatch_rate, report.mismatch_rate_raw,
        real, noise,
    ))
    console.print(
        f"[green]✓[/green] shadow report ({label}): {report.compared} compared, "
        f"mismatch rate {report.mismatch_rate:.1%} with noise removed ({report.mismatch_rate_raw:.1%} raw)"
    )
    for name in real[:5]:
        console.print(f"    real difference: {name}")
    for name in noise[:3]:
        console.print(f"    noise (the monolith disagrees with itself): {name}")
    console.print(f"    report: {report_path}")


def _shift_reads(env: DemoEnv, requests_per_step: int, console: Console) -> None:
    from scripts.routes_cmd import shift_weights

    for weight in STEPS:
        before = _route_version(env)
        shifted = shift_weights(env.routing_path, ROUTE_ID, {"catalog": weight, "monolith": 100 - weight})
        if shifted.written:
            _wait_reloaded(env, before)
            console.print(f"[cyan]→[/cyan] routes shift {ROUTE_ID} --to catalog={weight}: façade reloaded")
        else:
            console.print(f"[cyan]→[/cyan] {ROUTE_ID} already sends {weight}% to catalog")
        env.results.append(_send_traffic(env, weight, requests_per_step))


def _route_version(env: DemoEnv) -> str:
    return str(httpx.get(f"{env.facade_url}/_strangler/routes", timeout=5).json().get("version"))


def _wait_reloaded(env: DemoEnv, previous_version: str, timeout: float = 15.0) -> None:
    """Wait for the façade to pick up the edited file (it watches it), nudging it via the API."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{env.facade_url}/_strangler/routes", timeout=5).json()
        if str(body.get("version")) != previous_version:
            if body.get("last_error"):
                raise ProcessError(f"the façade rejected the new routing.yaml: {body['last_error']}")
            return
        time.sleep(0.1)
    httpx.post(f"{env.facade_url}/_strangler/reload", timeout=5)


def _requests_by_upstream(env: DemoEnv) -> dict[str, float]:
    text = httpx.get(f"{env.facade_url}/_strangler/metrics", timeout=5).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "strangler_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("route") == ROUTE_ID:
                upstream = sample.labels.get("upstream", "?")
                counts[upstream] = counts.get(upstream, 0) + sample.value
    return counts


def _send_traffic(env: DemoEnv, weight: int, total: int) -> StepResult:
    """Anonymous clients, each with its own cookie jar (so its own sticky assignment cookie),
    read products through the façade; per-upstream counts come from the façade's metrics."""
    before = _requests_by_upstream(env)
    per_client = 2
    clients = max(1, total // per_client)
    errors = 0
    for client_no in range(clients):
        with httpx.Client(base_url=env.facade_url, timeout=10) as client:
            for i in range(per_client):
                product_id = 1 + (client_no * per_client + i) % 1000
                if client.get(f"/api/products/{product_id}").status_code != 200:
                    errors += 1
    after = _requests_by_upstream(env)
    per_upstream = {name: int(after.get(name, 0) - before.get(name, 0)) for name in sorted(set(after) | set(before))}
    per_upstream.setdefault("monolith", 0)
    per_upstream.setdefault("catalog", 0)
    return StepResult(weight, per_upstream, errors, clients)


def _print_summary(env: DemoEnv, console: Console) -> None:
    table = Table(title="Catalog reads through the façade, per weight step")
    table.add_column("catalog weight", justify="right")
    table.add_column("requests", justify="right")
    table.add_column("→ monolith", justify="right")
    table.add_column("→ catalog", justify="right")
    table.add_column("catalog share", justify="right")
    table.add_column("errors", justify="right")
    for r in env.results:
        share = r.per_upstream.get("catalog", 0) / r.total if r.total else 0.0
        table.add_row(
            f"{r.weight}%", str(r.total), str(r.per_upstream.get("monolith", 0)),
            str(r.per_upstream.get("catalog", 0)), f"{share:.0%}", str(r.errors),
        )
    console.print(table)
    console.print(f"Logs of every process: {env.group.log_dir}")
