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

from tests.cdc.apply_fixtures import ROOT, SYNC_YAML, legacy_and_target, query
from tests.cdc.test_pipeline import seed
from tests.support import wait_for

__all__ = ["legacy_and_target"]

WRITER = r"""
import os, random, sys, psycopg2
url, stop_file, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
conn = psycopg2.connect(url)
conn.autocommit = True
cur = conn.cursor()
next_id = 100000
while not os.path.exists(stop_file):
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


def test_sigkill_at_random_points_then_verify_clean(legacy_and_target: tuple[str, str], tmp_path: Path) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 3000)
    urls = ["--spec", str(SYNC_YAML), "--source-url", legacy, "--target-url", target]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    stop_file = tmp_path / "stop-writing"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, legacy, str(stop_file), "7"], cwd=ROOT, env=env)
    rng = random.Random(11)
    kills = 0
    try:
        for _ in range(3):
            with (tmp_path / f"run{kills}.log").open("w") as log:
                applier = subprocess.Popen(_cli("cdc", "run", *urls), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            before = _checkpoint(target)
            t0 = time.monotonic()
            wait_for(lambda: _checkpoint(target) > before or applier.poll() is not None, timeout=60,
                     what="the applier to commit a batch")
            assert applier.poll() is None, (tmp_path / f"run{kills}.log").read_text()
            time.sleep(rng.uniform(0, 0.05))  # a random point, not synchronisation
            print("round", kills, time.monotonic() - t0)
            applier.send_signal(signal.SIGKILL)
            applier.wait(10)
            kills += 1
        stop_file.touch()
        assert writer.wait(60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    t0 = time.monotonic()
    final = subprocess.run(_cli("cdc", "run", *urls, "--until-caught-up", "--idle-timeout", "2"), cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    print("final", time.monotonic() - t0)
    t0 = time.monotonic()
    check = subprocess.run(_cli("verify", *urls, "--json", "--wait", "20"), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    print("verify", time.monotonic() - t0)
    assert kills == 3
    assert query(target, "SELECT count(*) FROM catalog.products")[0][0] == query(legacy, "SELECT count(*) FROM catalog_product")[0][0]
