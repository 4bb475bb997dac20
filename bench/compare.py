"""Comparator benchmark: time `facade.shadow.compare.compare` on two ~400 KB JSON bodies.

Target (shadow issue): comparing two 400 KB JSON bodies takes at most 5 ms. Cases:
identical content serialised differently (the common case: parse both, prove equal), a handful of
differing fields, a reordered array, and a worst case where every product differs. Each comparison runs
in turn with the floor under it, `orjson.loads` of both bodies, which no structural comparison
avoids; the median of the per-pair ratios is printed beside the milliseconds: on a host whose speed
swings, the milliseconds move with it and the ratio much less.

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

from facade.shadow.compare import Reply, compare  # noqa: E402
from facade.shadow.rules import CompareRules, Normalizer  # noqa: E402

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


def parse_both(a: bytes, b: bytes) -> None:
    """The floor under any structural comparison: both bodies parsed, the garbage collector paused
    as `compare` pauses it."""
    gc.disable()
    try:
        orjson.loads(a), orjson.loads(b)
    finally:
        gc.enable()


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """CPU time of this thread (on a shared machine, the cost) and wall-clock time of one call, in ms."""
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return (time.thread_time() - c0) * 1000, (time.perf_counter() - t0) * 1000


def time_case(fn: Callable[[], Any], reference: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Times of `fn`, each run paired with a run of `reference`, in alternating order. The host's
    speed swings within seconds, so the ratio is taken per pair and its median reported."""
    fn(), reference()  # warm up
    cpu, wall, ref_cpu, ratios = [], [], [], []
    for i in range(repeat):
        if i % 2:
            ref, run = timed(reference), timed(fn)
        else:
            run, ref = timed(fn), timed(reference)
        cpu.append(run[0])
        wall.append(run[1])
        ref_cpu.append(ref[0])
        ratios.append(run[0] / ref[0])
    wall.sort()
    return {
        "median_ms": statistics.median(wall),
        "p95_ms": wall[int(len(wall) * 0.95) - 1],
        "min_ms": wall[0],
        "cpu_median_ms": statistics.median(cpu),
        "parse_cpu_median_ms": statistics.median(ref_cpu),
        "ratio_to_parse": statistics.median(ratios),
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
        stats = time_case(
            lambda c=candidate, r=case_rules: compare(primary, c, r),
            lambda c=candidate: parse_both(primary.body, c.body),
            args.repeat,
        )
        stats["differences"] = len(outcome.differences)
        results[name] = stats
    summary = {"body_bytes": len(primary.body), "products": n, "target_ms": TARGET_MS, "cases": results}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"comparing two {len(primary.body) / 1000:.0f} KB JSON bodies ({n} products), target ≤ {TARGET_MS} ms")
        for name, s in results.items():
            verdict = "ok" if s["cpu_median_ms"] <= TARGET_MS else "OVER"
            print(
                f"  {name:45s} wall median {s['median_ms']:6.2f} ms  min {s['min_ms']:6.2f} ms  "
                f"cpu median {s['cpu_median_ms']:6.2f} ms  diffs {int(s['differences']):5d}  {verdict}"
                f"  parse both {s['parse_cpu_median_ms']:5.2f} ms, ×{s['ratio_to_parse']:.2f}"
            )
        print("  (parse both: orjson.loads of the two bodies, run in turn with each comparison; ×: the comparison's CPU time over it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
