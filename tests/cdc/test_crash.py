"""The applier killed with SIGKILL at random points while the legacy database changes, restarted,
ends with `strangler verify` clean: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cdc.apply_fixtures import ROOT, SYNC_YAML, legacy_and_target, query
from tests.cdc.test_pipeline import seed
from tests.support import wait_for

__all__ = ["legacy_and_target"]

# A restarted consumer waits for the killed one's session to expire before it gets the partitions.
KAFKA_OPTIONS = ["session.timeout.ms=6000", "heartbeat.interval.ms=300", "log_level=3"]

WRITER = r"""
import os, random, sys, psycopg2
import time
url, stop_file, seed, ops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
conn = psycopg2.connect(url)
conn.autocommit = True
cur = conn.cursor()
next_id = 100000
for i in range(ops):
    if os.path.exists(stop_file):
        break
    time.sleep(0.005)  # a steady trickle of changes (pacing, not synchronisation)
    kind = rng.random()
    if kind < 0.4:
        next_id += 1
        cur.execute("INSERT INTO catalog_product (id, sku, name, slug, price, category_id, created_at, updated_at)"
                    " VALUES (%s, %s, 'new', 'new', 3.50, 1, now(), now())", (next_id, f"N-{next_id}"))
    elif kind < 0.8:
        with conn:
            cur.execute("UPDATE catalog_product SET price = price + 0.01, stock = stock + 1, updated_at = now()"
                        " WHERE id IN (SELECT id FROM catalog_product ORDER BY random() LIMIT 20)")
    elif kind < 0.95:
        cur.execute("DELETE FROM catalog_product WHERE id = (SELECT id FROM catalog_product ORDER BY random() LIMIT 1)")
    else:
        cur.execute("UPDATE catalog_product SET id = id + 500000 WHERE id = (SELECT min(id) FROM catalog_product WHERE id < 500000)")
conn.close()
"""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scripts", *args]


def _checkpoint(target: str) -> int:
    try:
        rows = query(target, "SELECT lsn FROM strangler.checkpoint WHERE name = 'catalog'")
    except Exception:  # noqa: BLE001 - the bookkeeping tables may not exist yet
        return -1
    return int(rows[0][0]) if rows else -1


@pytest.mark.parametrize("transport", ["memory", "kafka"])
def test_sigkill_at_random_points_then_verify_clean(legacy_and_target: tuple[str, str], tmp_path: Path, transport: str) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 3000)
    urls = ["--spec", str(SYNC_YAML), "--source-url", legacy, "--target-url", target]
    run_args: list[str] = []
    cluster = None
    if transport == "kafka":
        from tests.cdc.kafka_cluster import MockCluster

        cluster = MockCluster(1)  # lives in this process; the applier subprocesses connect over loopback
        run_args = ["--transport", "kafka", "--bootstrap-servers", cluster.bootstrap_servers,
                    *(f"--kafka-option={o}" for o in KAFKA_OPTIONS)]
    rounds = 3 if transport == "memory" else 2
    ops = "1500" if transport == "memory" else "800"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stop_file = tmp_path / "stop-writing"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, legacy, str(stop_file), "7", ops], cwd=ROOT, env=env)
    rng = random.Random(11)
    kills = 0
    try:
        for _ in range(rounds):
            with (tmp_path / f"run{kills}.log").open("w") as log:
                applier = subprocess.Popen(_cli("cdc", "run", *urls, *run_args), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            before = _checkpoint(target)
            wait_for(lambda: _checkpoint(target) > before or applier.poll() is not None or writer.poll() is not None,
                     timeout=60, what="the applier to commit a batch")
            assert applier.poll() is None, (tmp_path / f"run{kills}.log").read_text()
            time.sleep(rng.uniform(0, 0.05))  # a random point, not synchronisation
            applier.send_signal(signal.SIGKILL)
            applier.wait(10)
            kills += 1
        stop_file.touch()
        assert writer.wait(60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    # Restarted for good: verify while it streams (it retries until the applier has caught up),
    # then a graceful stop with SIGTERM.
    with (tmp_path / "final.log").open("w") as log:
        final = subprocess.Popen(_cli("cdc", "run", *urls, *run_args), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        check = subprocess.run(_cli("verify", *urls, "--json", "--wait", "120"), cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=180)
    finally:
        final.send_signal(signal.SIGTERM)
        assert final.wait(30) == 0, (tmp_path / "final.log").read_text()
    assert check.returncode == 0, check.stdout + check.stderr
    assert kills == rounds
    del cluster
    assert query(target, "SELECT count(*) FROM catalog.products")[0][0] == query(legacy, "SELECT count(*) FROM catalog_product")[0][0]
