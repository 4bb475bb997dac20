"""The sample stack the demo, its `--stay-up` mode and bench/cutover.py run on.

`sample_stack` starts, on a private PostgreSQL (or the server of `--database-url`), a fresh pair of
databases, the seeded monolith, the catalog service (its store migrated by Alembic), the façade on
a copy of the repository's `routing.yaml`, and the forward CDC stream (`strangler cdc run --spec
extracted/catalog/sync.yaml`: snapshot, then live changes, checked with a price change and an
order) and, with extracted/catalog/reverse.yaml, the reverse stream; the product tables of both
sides log whole old rows (REPLICA IDENTITY FULL), as column ownership after the write switch
needs; on exit it stops the stream, drops its slot and publication and stops every process
(also on Ctrl-C). `Stack` says where each part can be reached.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console

from common.postgres import ENV_DATABASE_URL, EmbeddedPostgres, PostgresServer, free_port, resolve_server
from common.processes import ProcessError, ProcessGroup, python_module
from common.waiting import TimedOut, wait_until

__all__ = ["CdcResult", "REVERSE_SPEC_PATH", "SPEC_PATH", "Stack", "cutover_env", "restart_catalog", "sample_stack", "spec_env"]

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "extracted" / "catalog" / "sync.yaml"
REVERSE_SPEC_PATH = ROOT / "extracted" / "catalog" / "reverse.yaml"


@dataclass
class CdcResult:
    snapshot_rows: int
    live_change_ms: float
    verify_identical: bool
    verify_tables: dict[str, dict[str, int]]



@dataclass
class Stack:
    """Where everything the stack started can be reached."""

    work_dir: Path
    group: ProcessGroup
    database_url: str = ""
    monolith_url: str = ""
    catalog_url: str = ""
    facade_url: str = ""
    legacy_db: str = ""
    catalog_db: str = ""
    routing_path: Path = field(default_factory=Path)
    catalog_port: int = 0
    cdc: CdcResult | None = None
    reverse_spec: Path | None = None
    """The reverse stream's spec, once that stream runs (service store → legacy tables)."""

    def services(self) -> dict[str, str]:
        return {"monolith": self.monolith_url, "catalog": self.catalog_url, "facade": self.facade_url}


@contextmanager
def sample_stack(
    *, database_url: str | None, products: int, work_dir: Path, console: Console, db_prefix: str = "demo",
    stack_type: type[Stack] = Stack, ephemeral: bool = False, reverse: bool | None = None,
) -> Iterator[Stack]:
    """Start the whole sample stack (see the module's docstring); stop and clean it on exit.
    `reverse`: also run the reverse stream (by default when extracted/catalog/reverse.yaml exists)."""
    work_dir = work_dir.absolute()
    if work_dir.exists():
        shutil.rmtree(work_dir / "logs", ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    with postgres(database_url, work_dir, console, ephemeral=ephemeral) as server, ProcessGroup(work_dir / "logs") as group:
        env = stack_type(work_dir=work_dir, group=group, database_url=server.url())  # type: ignore[attr-defined]
        # A fresh pair of databases each run, so the stack always starts from the same point.
        env.legacy_db = fresh_database(server, f"{db_prefix}_legacy")
        env.catalog_db = fresh_database(server, f"{db_prefix}_catalog")
        start_services(env, products, console)
        replica_identity_full(env)
        try:
            start_cdc(env, console)
            if REVERSE_SPEC_PATH.exists() if reverse is None else reverse:
                start_reverse(env, console)
            yield env
        finally:
            # Also when interrupted: a slot left behind would hold WAL on the server forever.
            drop_cdc(env)


@contextmanager
def postgres(database_url: str | None, work_dir: Path, console: Console, *, ephemeral: bool = False) -> Iterator[object]:
    """The server of `database_url` (or STRANGLER_DATABASE_URL), else an embedded one under
    `work_dir` (its data directory removed on exit when `ephemeral`)."""
    with console.status("Starting PostgreSQL (wal_level=logical)…"):
        if database_url or os.environ.get(ENV_DATABASE_URL) or not ephemeral:
            server: PostgresServer = resolve_server(database_url, work_dir / "postgres")
        else:
            server = EmbeddedPostgres(work_dir / "postgres", ephemeral=True).start()
    console.print(f"[green]✓[/green] PostgreSQL at {server.url()}")
    try:
        yield server
    finally:
        server.stop()



def start_services(env: Stack, products: int, console: Console) -> None:
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
    env.catalog_port = catalog_port
    group.wait_healthy(monolith, f"{env.monolith_url}/healthz")
    restart_catalog(env, discrepancy=False)
    console.print(f"[green]✓[/green] monolith at {env.monolith_url}, catalog service at {env.catalog_url}")

    env.routing_path = env.work_dir / "routing.yaml"
    shutil.copyfile(ROOT / "routing.yaml", env.routing_path)
    with open(env.routing_path, "a", encoding="utf-8") as routing:
        # The demo's own shadow store, and half a core for the shadow worker (the default is 5%,
        # meant for a busy primary): the demo wants every one of its few mirrored reads compared.
        routing.write(
            f'\n# Added by the demo: its own shadow store, every mirrored read compared.\n'
            f'shadow_store: {{url: "sqlite:///{env.work_dir}/shadow.db"}}\nshadow_worker: {{cpu: 50}}\n'
        )
    facade = group.start(
        "facade",
        python_module("scripts", "facade", "serve", "--config", str(env.routing_path), "--port", str(facade_port)),
        env={"MONOLITH_URL": env.monolith_url, "CATALOG_URL": env.catalog_url},
    )
    group.wait_healthy(facade, f"{env.facade_url}/_strangler/health")
    console.print(f"[green]✓[/green] façade at {env.facade_url} (config {env.routing_path})")


def fresh_database(server: object, name: str) -> str:
    """Drop `name` (and any logical slot left on it by an earlier run), then create it."""
    import psycopg2
    from psycopg2 import sql

    admin_url = server.url()  # type: ignore[attr-defined]
    conn = psycopg2.connect(admin_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s AND NOT active",
                (name,),
            )
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()
    return server.create_database(name)  # type: ignore[attr-defined,no-any-return]


def spec_env(env: Stack) -> dict[str, str]:
    return {"STRANGLER_MONOLITH_DATABASE_URL": env.legacy_db, "STRANGLER_CATALOG_DATABASE_URL": env.catalog_db}


def cutover_env(env: Stack) -> dict[str, str]:
    """The environment `strangler cutover ...` needs against the stack: both databases (the sync
    specs read them), the façade (the plan's replicas) and the upstreams (the routing file)."""
    return {**spec_env(env), "STRANGLER_FACADE_URL": env.facade_url, "MONOLITH_URL": env.monolith_url,
            "CATALOG_URL": env.catalog_url}


OWNED_TABLES = {"legacy_db": "public.catalog_product", "catalog_db": "catalog.products"}
"""The tables whose columns the write switch splits between the two sides."""


def replica_identity_full(env: Stack) -> None:
    """`ALTER TABLE ... REPLICA IDENTITY FULL` on the product tables of both sides: column ownership
    after the write switch needs an update's whole old row to tell what it changed (the write
    switch's preflight asks for it)."""
    import psycopg2

    for attribute, table in OWNED_TABLES.items():
        conn = psycopg2.connect(getattr(env, attribute))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
        finally:
            conn.close()


def start_cdc(env: Stack, console: Console) -> None:
    """`strangler cdc run`: snapshot of the legacy catalog tables, then the live stream."""
    from cdc.spec import load_spec
    from cdc.verify import verify

    spec = load_spec(SPEC_PATH, env={**os.environ, **spec_env(env)})
    cdc = env.group.start(
        "cdc", python_module("scripts", "cdc", "run", "--spec", str(SPEC_PATH)), env=spec_env(env)
    )
    with console.status("CDC: snapshot of the legacy catalog into the catalog service's store…"):
        result = verify(spec, wait=120)
        if cdc.process.poll() is not None:
            raise ProcessError(f"cdc run exited with code {cdc.process.returncode}; last lines:\n{cdc.tail()}")
    rows = sum(t.matching for t in result.tables)
    if not result.identical:
        raise ProcessError(f"the catalog store did not catch up with the legacy tables: {result.to_dict()}")
    console.print(f"[green]✓[/green] CDC snapshot done: {rows} rows in the catalog store, streaming live changes")
    env.cdc = CdcResult(rows, live_change(env), False, {})
    console.print(
        f"[green]✓[/green] a price change and an order placed through the monolith reached the catalog service "
        f"in {env.cdc.live_change_ms:.0f} ms"
    )


def start_reverse(env: Stack, console: Console, timeout: float = 60.0) -> None:
    """`strangler cdc run --spec extracted/catalog/reverse.yaml`: the service store's changes into
    the legacy tables (no snapshot: from its slot's creation), running beside the forward stream."""
    import psycopg2

    from cdc.spec import load_spec

    spec = load_spec(REVERSE_SPEC_PATH, env={**os.environ, **spec_env(env)})
    child = env.group.start(
        "cdc-reverse", python_module("scripts", "cdc", "run", "--spec", str(REVERSE_SPEC_PATH)), env=spec_env(env)
    )
    env.reverse_spec = REVERSE_SPEC_PATH

    def streaming() -> bool:
        if child.process.poll() is not None:
            raise ProcessError(f"the reverse cdc run exited with code {child.process.returncode}; last lines:\n{child.tail()}")
        conn = psycopg2.connect(env.catalog_db)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (spec.slot_name,))
                row = cur.fetchone()
        finally:
            conn.close()
        return bool(row and row[0])

    with console.status("CDC: starting the reverse stream (catalog store → legacy tables)…"):
        try:
            wait_until(streaming, timeout, 0.1, what="the reverse stream's slot to be active")
        except TimedOut as exc:
            raise ProcessError(f"the reverse stream did not start within {timeout:.0f}s; see {child.log_path}") from exc
    console.print(f"[green]✓[/green] reverse CDC streaming (slot {spec.slot_name}): the catalog store's writes reach the legacy tables")


def live_change(env: Stack, timeout: float = 30.0) -> float:
    """Change a price and place an order through the monolith; time until the catalog service shows both."""
    with httpx.Client(base_url=env.monolith_url, timeout=10) as staff, \
            httpx.Client(base_url=env.monolith_url, timeout=10) as customer:
        staff.post("/accounts/login", json={"username": "admin", "password": "admin"}).raise_for_status()
        customer.post("/accounts/login", json={"username": "user1", "password": "password"}).raise_for_status()
        before = staff.get("/api/products/2").json()
        started = time.monotonic()
        staff.patch("/api/products/1", json={"price": "123.45"}).raise_for_status()
        customer.post("/api/orders", json={"items": [{"product_id": 2, "quantity": 1}]}).raise_for_status()
    seen: dict[str, object] = {}

    def arrived() -> bool:
        seen["price"] = catalog.get("/api/products/1").json().get("price")
        seen["stock"] = catalog.get("/api/products/2").json().get("stock")
        return seen["price"] == "123.45" and seen["stock"] == before["stock"] - 1

    with httpx.Client(base_url=env.catalog_url, timeout=10) as catalog:
        try:
            wait_until(arrived, max(0.0, started + timeout - time.monotonic()), 0.02, what="the live change")
        except TimedOut:
            raise ProcessError(
                f"the live change did not reach the catalog service within {timeout:.0f}s (it shows price "
                f"{seen.get('price')!r} for product 1 and stock {seen.get('stock')!r} for product 2; expected "
                f"'123.45' and {before['stock'] - 1}); see the cdc log"
            ) from None
    return (time.monotonic() - started) * 1000


def drop_cdc(env: Stack) -> None:
    """Stop the stream and remove its slot and publication, so no WAL is retained after the demo."""
    from cdc.spec import load_spec
    from cdc.teardown import drop

    for child in list(env.group.children):
        if child.name in ("cdc", "cdc-reverse"):
            env.group.stop(child)
    drop(load_spec(SPEC_PATH, env={**os.environ, **spec_env(env)}))
    if env.reverse_spec is not None:
        drop(load_spec(env.reverse_spec, env={**os.environ, **spec_env(env)}))


def restart_catalog(env: Stack, *, discrepancy: bool, errors: int = 0) -> None:
    for child in list(env.group.children):
        if child.name == "catalog":
            env.group.stop(child)
    args = [
        "extracted.catalog", "serve", "--database-url", env.catalog_db, "--port", str(env.catalog_port),
        "--monolith-url", env.monolith_url,
    ]
    if discrepancy:
        args.append("--demo-discrepancy")
    if errors:
        args += ["--demo-errors", str(errors)]
    catalog = env.group.start("catalog", python_module(*args))
    env.group.wait_healthy(catalog, f"{env.catalog_url}/healthz")


STEPS = (10, 50, 100)
"""The demo's read cutover steps, percent to catalog."""


def write_plan(
    path: Path, *, routing: Path, spec: Path, facade_url: str, journal_url: str, events: Path, min_requests: int,
    reverse_spec: Path | None = None,
) -> Path:
    """The demo's cutover plan: the catalog plan's shape with soaks sized for a demo, and the
    write switch of extracted/catalog/cutover.yaml (with the reverse stream's spec when given)."""
    target = max(5, min_requests // 20)  # the 10% step sees about a tenth of the step's requests
    steps = ", ".join(str(weight) for weight in STEPS)
    path.write_text(
        "# Written by `strangler demo`: the read cutover of its own stack (see extracted/catalog/cutover.yaml).\n"
        "version: 1\n"
        "name: demo-catalog-reads\n"
        f"routing: {routing}\n"
        "routes: [catalog-read]\n"
        "target: catalog\n"
        f"sync: {spec}\n"
        f'facade: {{replicas: ["{facade_url}"], reload: watch, reload_timeout: 20s}}\n'
        f"steps: [{steps}]\n"
        f"soak: {{min_time: 2s, min_requests: {min_requests}}}   # a few seconds and the demo's requests per step\n"
        "interval: 0.5s\n"
        "gates:\n"
        f"  error_rate: {{max_increase: 1, min_requests: {target}}}\n"
        f"  latency: {{max_p99_ratio: 10, min_requests: {target}}}   # lenient: a shared laptop is noisy\n"
        "  cdc: {max_lag: 10s, max_dead_letters: 0}\n"
        "  verify: {max_age: 10m, wait: 30s}\n"
        "on_fail: last_passed\n"
        "on_inconclusive: {max_soak: 60s, then: fail}\n"
        f'journal: {{database_url: "{journal_url}", lease: 30s}}\n'
        f"events: {{file: {events}}}\n"
        "writes:\n"
        "  routes: [catalog-write]\n"
        "  budget: 1s\n"
        + (f"  reverse_sync: {reverse_spec}\n" if reverse_spec is not None else "")
        + "  ownership:\n"
        "    catalog.products:\n"
        "      service: [sku, title, slug, description, price_cents, active, category_id, attributes, created_at, updated_at]\n"
        "      legacy: [stock]\n",
        encoding="utf-8",
    )
    return path
