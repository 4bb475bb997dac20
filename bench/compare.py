"""Comparator benchmark: time `facade.compare.compare` on two ~400 KB JSON bodies.

Target (shadow issue): comparing two 400 KB JSON bodies takes at most 5 ms. Cases:
identical content serialised differently (the common case: parse both, prove equal), a handful of
differing fields, a reordered array, and a worst case where every product differs.

    .venv/bin/python bench/compare.py [--repeat 50] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facade.compare import CompareRules, Normalizer, Reply, compare  # noqa: E402

TARGET_MS = 5.0
HEADERS = {"content-type": "application/json"}


def product(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "sku": f"SKU-{i:06d}",
        "name": f"Product number {i} with a reasonably long display name",
        "slug": f"product-number-{i}",
        "description": "A sturdy, well made thing. " * 6,
        "price": f"{(i % 997) + 0.99:.2f}",
        "stock": i % 50,
        "is_active": i % 7 != 0,
        "category": {"id": i % 12, "slug": f"cat-{i % 12}", "name": f"Category {i % 12}"},
        "attributes": {"colour": ["red", "green", "blue"][i % 3], "size": i % 5, "tags": ["a", "b"]},
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-06-01T12:30:00Z",
    }


def page(n: int) -> dict[str, Any]:
    return {"count": n, "next": None, "previous": None, "results": [product(i) for i in range(n)]}


def body(doc: Any, *, sort_keys: bool = False) -> bytes:
    return json.dumps(doc, sort_keys=sort_keys).encode()


def time_case(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Wall-clock and CPU time (this thread only: on a shared machine the CPU time is the cost)."""
    fn()  # warm up
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append((time.thread_time() - c0) * 1000)
        wall.append((time.perf_counter() - t0) * 1000)
    wall.sort()
    return {
        "median_ms": statistics.median(wall),
        "p95_ms": wall[int(len(wall) * 0.95) - 1],
        "min_ms": wall[0],
        "cpu_median_ms": statistics.median(cpu),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args()

    n = 1
    while len(body(page(n))) < 400_000:
        n += 50
    base = page(n)
    primary = Reply(200, HEADERS, body(base))
    rng = random.Random(7)

    same = Reply(200, HEADERS, body(base, sort_keys=True))
    few = json.loads(primary.body)
    for i in rng.sample(range(n), 5):
        few["results"][i]["price"] = "0.01"
    del few["results"][3]["slug"]
    reordered = json.loads(primary.body)
    reordered["results"][10], reordered["results"][11] = reordered["results"][11], reordered["results"][10]
    every = json.loads(primary.body)
    for p in every["results"]:
        p["updated_at"] = "2025-01-01T00:00:00Z"
        p["stock"] += 1

    bodies = {"same": same, "few": Reply(200, HEADERS, body(few)), "reordered": Reply(200, HEADERS, body(reordered)), "every": Reply(200, HEADERS, body(every))}
    del base, few, reordered, every  # only the bytes stay alive, as in the façade
    gc.collect()
    rules = CompareRules(normalize=(Normalizer(r"^\d{4}-\d\d-\d\dT[\d:]+Z$", "<ts>"),), array_keys={"$.results": "id"})
    cases = {
        "equal content, different serialisation": (bodies["same"], None),
        "5 prices + 1 missing field": (bodies["few"], None),
        "two array elements swapped": (bodies["reordered"], None),
        "every product differs (keyed, normalised)": (bodies["every"], rules),
    }
    results = {}
    for name, (candidate, case_rules) in cases.items():
        outcome = compare(primary, candidate, case_rules, limit=10_000)
        stats = time_case(lambda c=candidate, r=case_rules: compare(primary, c, r), args.repeat)
        stats["differences"] = len(outcome.differences)
        results[name] = stats
    # The floor under every case: parsing both bodies, which any structural comparison must do.
    floor = time_case(lambda: (orjson.loads(primary.body), orjson.loads(bodies["same"].body)), args.repeat)
    summary = {"body_bytes": len(primary.body), "products": n, "target_ms": TARGET_MS, "cases": results, "parse_both_reference": floor}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"comparing two {len(primary.body) / 1000:.0f} KB JSON bodies ({n} products), target ≤ {TARGET_MS} ms")
        for name, s in results.items():
            verdict = "ok" if s["cpu_median_ms"] <= TARGET_MS else "OVER"
            print(
                f"  {name:45s} wall median {s['median_ms']:6.2f} ms  min {s['min_ms']:6.2f} ms  "
                f"cpu median {s['cpu_median_ms']:6.2f} ms  diffs {int(s['differences']):5d}  {verdict}"
            )
        print(
            f"  {'(reference: orjson.loads of both bodies)':45s} wall median {floor['median_ms']:6.2f} ms  min {floor['min_ms']:6.2f} ms  "
            f"cpu median {floor['cpu_median_ms']:6.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
