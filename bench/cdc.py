"""CDC benchmark: our pipeline against plain PostgreSQL tools, measured in one run on one server.

On a private EmbeddedPostgres (wal_level=logical):

1. throughput: N products inserted (100 rows per transaction) while two slots exist; a plain
   pgoutput reader (psycopg2 replication connection, messages received, nothing decoded) reads
   them from one slot, then the full pipeline (read, decode, map, apply into the catalog
   store, checkpoint, ack) drains the other; printed as the ratio end-to-end / raw (target ≥ 15%);
2. lag: the pipeline running while a writer inserts 2,000 rows/s (20 rows per transaction,
   100 transactions/s) for ~10 s; lag = time the row is committed in the service store minus its
   commit time in the legacy database; p50/p99 (target p99 ≤ 0.5 s);
3. snapshot: 1,000,000 products copied by `cdc run`'s initial snapshot vs `COPY (SELECT ...) TO
   STDOUT` piped into `COPY ... FROM STDIN` between the same two databases (target ≤ 2×).

`--quick` uses smaller sizes. Everything started is stopped on exit; the temp directory is removed.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402
import psycopg2.extras  # noqa: E402
import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from cdc.apply import Applier  # noqa: E402
from cdc.pipeline import prepare, run  # noqa: E402
from cdc.snapshot import copy_pipe  # noqa: E402
from cdc.spec import SyncSpec, load_spec  # noqa: E402
from common.postgres import EmbeddedPostgres  # noqa: E402

LEGACY_DDL = """
CREATE TABLE catalog_category (id serial PRIMARY KEY, name varchar(100) NOT NULL,
  slug varchar(100) UNIQUE NOT NULL, parent_id int NULL REFERENCES catalog_category);
CREATE TABLE catalog_product (id serial PRIMARY KEY, sku varchar(32) UNIQUE NOT NULL,
  name varchar(200) NOT NULL, slug varchar(200) NOT NULL, description text NOT NULL DEFAULT '',
  price numeric(10,2) NOT NULL, stock int NOT NULL DEFAULT 0, is_active bool NOT NULL DEFAULT true,
  category_id int NOT NULL REFERENCES catalog_category, attributes jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
INSERT INTO catalog_category (id, name, slug) VALUES (1, 'Tools', 'tools');
"""

INSERT_ROWS = """
INSERT INTO catalog_product (id, sku, name, slug, description, price, stock, is_active, category_id, attributes,
  created_at, updated_at)
SELECT g, 'SKU-' || g, 'Product ' || g, 'product-' || g, 'A fine product number ' || g, (g %% 1000) + 0.99, g %% 50,
  true, 1, jsonb_build_object('color', 'red', 'n', g), now(), now()
FROM generate_series(%s, %s) g
"""

SPEC = ROOT / "extracted" / "catalog" / "sync.yaml"


def _exec(url: str, sql: str, params: Any = None) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
    finally:
        conn.close()


def _scalar(url: str, sql: str) -> Any:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


def _databases(pg: EmbeddedPostgres, tag: str) -> tuple[str, str, SyncSpec]:
    from extracted.catalog.migrate import migrate

    legacy = pg.create_database(f"bench_legacy_{tag}")
    target = pg.create_database(f"bench_catalog_{tag}")
    _exec(legacy, LEGACY_DDL)
    migrate(target)
    spec = load_spec(SPEC, env={}).with_urls(source_url=legacy, target_url=target)
    return legacy, target, spec


def _insert(url: str, start: int, count: int, per_tx: int) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for lo in range(start, start + count, per_tx):
                cur.execute(INSERT_ROWS, (lo, min(lo + per_tx, start + count) - 1))
    finally:
        conn.close()


def raw_read(url: str, slot: str, publication: str, expected_commits: int) -> float:
    """Seconds a plain pgoutput reader takes to receive every message up to the last commit."""
    conn = psycopg2.connect(url, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    commits = 0
    start = time.perf_counter()
    cur.start_replication(slot_name=slot, decode=False,
                          options={"proto_version": "1", "publication_names": publication})

    class Done(Exception):
        pass

    def consume(msg: Any) -> None:
        nonlocal commits
        if msg.payload[:1] == b"C":
            commits += 1
            if commits >= expected_commits:
                raise Done

    try:
        cur.consume_stream(consume)
    except Done:
        pass
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def throughput(pg: EmbeddedPostgres, rows: int) -> dict[str, Any]:
    legacy, target, spec = _databases(pg, "tput")
    applier = Applier(spec).open()
    prepare(spec, applier)  # empty snapshot; creates publication + slot
    applier.close()
    _exec(legacy, "SELECT pg_create_logical_replication_slot('bench_raw', 'pgoutput')")
    per_tx = 100
    _insert(legacy, 1, rows, per_tx)
    commits = (rows + per_tx - 1) // per_tx
    raw = raw_read(legacy, "bench_raw", spec.publication_name, commits)
    _exec(legacy, "SELECT pg_drop_replication_slot('bench_raw')")
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(spec,), kwargs={"stop": stop}, daemon=True)
    start = time.perf_counter()
    thread.start()
    # Changes are applied in commit order, whole transactions at a time: the last row's arrival
    # means all have arrived. One connection, one index probe per poll: a new connection or a
    # count(*) each time would tax the server the pipeline runs on.
    poll = psycopg2.connect(target)
    poll.autocommit = True
    with poll.cursor() as cur:
        while True:
            cur.execute("SELECT EXISTS (SELECT 1 FROM catalog.products WHERE id = %s)", (rows,))
            if cur.fetchone()[0]:
                break
            time.sleep(0.02)
    e2e = time.perf_counter() - start
    poll.close()
    stop.set()
    thread.join(30)
    arrived = _scalar(target, "SELECT count(*) FROM catalog.products")
    if arrived != rows:
        raise RuntimeError(f"{arrived} of {rows} rows reached the service store")
    return {"rows": rows, "raw_seconds": raw, "raw_rows_per_s": rows / raw, "e2e_seconds": e2e,
            "e2e_rows_per_s": rows / e2e, "ratio": raw / e2e}


def lag(pg: EmbeddedPostgres, seconds: float, rate: int) -> dict[str, Any]:
    legacy, target, spec = _databases(pg, "lag")
    stop = threading.Event()
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(run(spec, stop=stop, record_lag=True, heartbeat_interval=1.0)), daemon=True
    )
    thread.start()
    while not _scalar(legacy, "SELECT count(*) FROM pg_replication_slots WHERE active"):
        time.sleep(0.05)
    per_tx = 20
    tx_per_s = rate / per_tx
    conn = psycopg2.connect(legacy)
    conn.autocommit = True
    cur = conn.cursor()
    start = time.perf_counter()
    sent = 0
    next_id = 1
    while time.perf_counter() - start < seconds:
        due = int((time.perf_counter() - start) * tx_per_s)
        while sent < due:
            cur.execute(INSERT_ROWS, (next_id, next_id + per_tx - 1))
            next_id += per_tx
            sent += 1
        time.sleep(0.002)
    achieved = (next_id - 1) / (time.perf_counter() - start)
    conn.close()
    while _scalar(target, "SELECT count(*) FROM catalog.products") < next_id - 1:
        time.sleep(0.02)
    stop.set()
    thread.join(30)
    lags = sorted(result[0].lags_ms) if result else []
    if not lags:
        return {"error": "no lag samples"}
    return {"writes_per_s": achieved, "rows": next_id - 1, "p50_s": statistics.median(lags) / 1000,
            "p99_s": lags[int(len(lags) * 0.99) - 1] / 1000, "max_s": lags[-1] / 1000}


def snapshot(pg: EmbeddedPostgres, rows: int) -> dict[str, Any]:
    legacy, target, spec = _databases(pg, "snap")
    _insert(legacy, 1, rows, 200_000)
    _exec(legacy, "VACUUM ANALYZE catalog_product")
    # The reference: the same rows through COPY TO STDOUT | COPY FROM STDIN (projected the same way),
    # into a table with the same indexes as the service table.
    _exec(target, "CREATE TABLE public.copy_reference (LIKE catalog.products INCLUDING ALL)")
    src = psycopg2.connect(legacy)
    dst = psycopg2.connect(target)
    start = time.perf_counter()
    copy_pipe(src, dst,
              "SELECT id, sku, name, slug, description, (price * 100)::bigint, stock, is_active, category_id, "
              "attributes, created_at, updated_at FROM catalog_product", [],
              "COPY public.copy_reference FROM STDIN")
    dst.commit()
    reference = time.perf_counter() - start
    src.close()
    dst.close()
    start = time.perf_counter()
    stats = run(spec, until_caught_up=True, idle_timeout=0.0)
    ours = time.perf_counter() - start
    copied = _scalar(target, "SELECT count(*) FROM catalog.products")
    return {"rows": rows, "copied": copied, "snapshot_rows": stats.snapshot_rows, "copy_pipe_seconds": reference,
            "cdc_snapshot_seconds": ours, "ratio": ours / reference}


def main(
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes (a quick check, not the targets' sizes)."),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Run the three CDC measurements and print them with their targets."""
    console = Console(stderr=json_output)
    tmp = Path(tempfile.mkdtemp(prefix="strangler-bench-cdc-"))
    pg = EmbeddedPostgres(tmp / "pg", ephemeral=True)
    results: dict[str, Any] = {}
    try:
        with console.status("starting PostgreSQL"):
            pg.start()
        with console.status("throughput: raw pgoutput read vs end to end"):
            results["throughput"] = throughput(pg, 20_000 if quick else 100_000)
        with console.status("lag at 2,000 writes/s"):
            results["lag"] = lag(pg, 4.0 if quick else 10.0, 2000)
        with console.status("snapshot vs COPY | COPY"):
            results["snapshot"] = snapshot(pg, 100_000 if quick else 1_000_000)
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if json_output:
        typer.echo(json.dumps(results, indent=2))
        return
    t, lg, sn = results["throughput"], results["lag"], results["snapshot"]
    table = Table(title="CDC benchmark" + (" (quick)" if quick else ""))
    for col in ("measure", "value", "target", "ok"):
        table.add_column(col)
    table.add_row("raw pgoutput read", f"{t['raw_rows_per_s']:,.0f} rows/s ({t['rows']:,} rows)", "", "")
    table.add_row("end to end (insert → service store)", f"{t['e2e_rows_per_s']:,.0f} rows/s", "", "")
    table.add_row("end to end / raw", f"{t['ratio']:.1%}", "≥ 15%", "yes" if t["ratio"] >= 0.15 else "NO")
    table.add_row("lag p50 / p99 / max", f"{lg['p50_s']:.3f} / {lg['p99_s']:.3f} / {lg['max_s']:.3f} s "
                  f"at {lg['writes_per_s']:,.0f} writes/s", "p99 ≤ 0.5 s", "yes" if lg["p99_s"] <= 0.5 else "NO")
    table.add_row("COPY TO | COPY FROM", f"{sn['copy_pipe_seconds']:.2f} s ({sn['rows']:,} rows)", "", "")
    table.add_row("cdc initial snapshot", f"{sn['cdc_snapshot_seconds']:.2f} s", "", "")
    table.add_row("snapshot / COPY pipe", f"{sn['ratio']:.2f}×", "≤ 2×", "yes" if sn["ratio"] <= 2 else "NO")
    console.print(table)


if __name__ == "__main__":
    typer.run(main)
