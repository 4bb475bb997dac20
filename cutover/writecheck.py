"""The checker of a write load: what both stores hold against what the clients were told.

After the streams have converged, `read_stores` reads the load's rows from the legacy table
(`public.catalog_product`) and from the service's (`catalog.products`); `judge` (pure) counts,
per store, acknowledged writes that are lost and creates that are doubled:

- a create (`201`) is lost when no row has its `sku` under the id it was answered with;
- an update (`200`) is lost when the product's final marker and price are those of an earlier
  acknowledged update (or of none of the run's writes): every acknowledged update after the one
  found is lost. Updates of a product are sent one at a time (`cutover.writeload`), so the
  last acknowledged is the one that must show, or a later one whose answer never came;
- an order (`201`) is lost when the product's stock is above its start minus every acknowledged
  order's quantity (orders without an answer may or may not have taken stock);
- a create is doubled when its marker is on more than one row.

`figures` (pure) adds the client's view of a switch window: errors (non-2xx, no answer), write
latency p50/p99/max before the window and in it, the added latency, and the pause the clients
saw (the longest wait of a write due in the window, less the median before it).
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import psycopg2

from cdc.apply import load_checkpoint
from cdc.spec import SyncSpec
from common.waiting import TimedOut, wait_until
from cutover.writeload import POOL_STOCK, WRITE_KINDS, Sample

__all__ = ["Figures", "Row", "StoreVerdict", "figures", "judge", "read_stores", "wait_caught_up"]


@dataclass(frozen=True, slots=True)
class Row:
    """One product row of a store, in the API's terms (price as text with two decimals)."""

    id: int
    sku: str
    marker: str
    price: str
    stock: int


@dataclass
class StoreVerdict:
    """What one store lost or doubled of the acknowledged writes."""

    store: str
    rows: int = 0
    lost_creates: int = 0
    lost_updates: int = 0
    lost_orders: int = 0
    doubled: int = 0
    samples: list[str] = field(default_factory=list)
    """A few sentences naming what was lost, for the report."""
    lost_writes: list[Sample] = field(default_factory=list, repr=False)
    """The acknowledged requests whose effect is missing, to place them in time."""
    doubled_writes: list[Sample] = field(default_factory=list, repr=False)

    @property
    def lost(self) -> int:
        return self.lost_creates + self.lost_updates + self.lost_orders

    def as_dict(self) -> dict[str, Any]:
        plain = {k: v for k, v in asdict(self).items() if k not in ("lost_writes", "doubled_writes")}
        return {**plain, "lost": self.lost}

    def within(self, start: float, end: float) -> dict[str, int]:
        """Lost and doubled of the writes sent in [start, end) (sent, not due: a client behind its
        rate sends a write long after its slot)."""
        return {
            "lost": sum(1 for s in self.lost_writes if start <= s.sent < end),
            "doubled": sum(1 for s in self.doubled_writes if start <= s.sent < end),
        }


def judge(store: str, samples: Sequence[Sample], rows: Iterable[Row], *, pool_stock: int = POOL_STOCK) -> StoreVerdict:
    """Count what `rows` (one store's rows of the run) lost or doubled of `samples`."""
    verdict = StoreVerdict(store)
    by_id: dict[int, Row] = {}
    markers = Counter[str]()
    for row in rows:
        by_id[row.id] = row
        markers[row.marker] += 1
        verdict.rows += 1

    def lose(sample: Sample, text: str) -> None:
        verdict.lost_writes.append(sample)
        if len(verdict.samples) < 5:
            verdict.samples.append(text)

    updates: dict[int, list[Sample]] = defaultdict(list)
    orders: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.kind in ("create", "pool") and s.ok and s.product_id is not None:
            row = by_id.get(s.product_id)
            if row is None or row.sku != s.marker:
                verdict.lost_creates += 1
                lose(s, f"create {s.marker} (answered id {s.product_id}): {'no row' if row is None else f'row has sku {row.sku}'}")
            if s.kind == "pool":
                updates[s.product_id].append(s)
        if s.kind == "create" and markers[s.marker] > 1:
            verdict.doubled += 1
            verdict.doubled_writes.append(s)
        if s.kind == "update" and s.product_id is not None:
            updates[s.product_id].append(s)
        elif s.kind == "order" and s.product_id is not None and s.ok:
            orders[s.product_id].append(s)
    for product_id, history in updates.items():
        row = by_id.get(product_id)
        # The pool create first, then its updates, one at a time: sent order is applied order.
        history.sort(key=lambda s: (s.kind != "pool", s.sent))
        acked = [i for i, s in enumerate(history) if s.ok]
        if not acked or row is None:
            continue
        last = acked[-1]
        found = next((i for i, s in enumerate(history) if s.marker == row.marker and s.price == row.price), None)
        if found is not None and found >= last:  # the last acknowledged, or a later one never answered
            continue
        shows = f"{row.marker} at {row.price}"
        for i in acked:
            if (found is None or i > found) and history[i].kind == "update":
                verdict.lost_updates += 1
                lose(history[i], f"product {product_id}: shows {shows}, not {history[i].marker} at {history[i].price} (acknowledged)")
    for product_id, placed in orders.items():
        row = by_id.get(product_id)
        if row is None:
            continue
        floor = pool_stock - sum(s.quantity for s in placed)
        if row.stock > floor:
            placed.sort(key=lambda s: s.sent)
            lost = row.stock - floor
            verdict.lost_orders += lost
            # Which decrements are missing the stock cannot say; the latest are the likeliest.
            for s in placed[-lost:]:
                lose(s, f"product {product_id}: stock {row.stock}, acknowledged orders leave at most {floor}")
    return verdict


@dataclass
class Figures:
    """The clients' view of a window of the run (a switch): errors, latency, the pause."""

    window: tuple[float, float]
    writes: int = 0
    errors: int = 0
    errors_by_status: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    before_ms: dict[str, float] = field(default_factory=dict)
    window_ms: dict[str, float] = field(default_factory=dict)
    added_ms: dict[str, float] = field(default_factory=dict)
    pause_s: float = 0.0
    slowest: list[dict[str, Any]] = field(default_factory=list)
    """The slowest writes of the window: when each was due (ms after the window's start), its latency."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"p50": statistics.median(ordered) * 1000, "p99": p99 * 1000, "max": ordered[-1] * 1000, "n": len(ordered)}


def figures(samples: Sequence[Sample], window: tuple[float, float], *, before: tuple[float, float] | None = None) -> Figures:
    """Errors of every request due in `window`, and write latency there against `before` (by
    default the same length of time just before the window)."""
    start, end = window
    length = max(end - start, 1.0)
    before = before or (start - length, start)
    result = Figures(window)
    in_window = [s for s in samples if start <= s.due <= end]
    statuses = Counter[str]()
    for s in in_window:
        if not s.ok:
            statuses[str(s.status) if s.status else "no answer"] += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(f"{s.kind} {s.marker or s.product_id}: {s.status or 'no answer'} {s.error[:120]}")
    result.errors = sum(statuses.values())
    result.errors_by_status = dict(statuses)
    writes = [s for s in in_window if s.kind in WRITE_KINDS]
    result.writes = len(writes)
    earlier = [s.latency for s in samples if s.kind in WRITE_KINDS and before[0] <= s.due < before[1]]
    result.before_ms = _quantiles(earlier)
    result.window_ms = _quantiles([s.latency for s in writes])
    result.added_ms = {k: max(0.0, result.window_ms[k] - result.before_ms[k]) for k in ("p50", "p99", "max")}
    result.pause_s = max(0.0, (result.window_ms["max"] - result.before_ms["p50"]) / 1000) if writes else 0.0
    result.slowest = [{"due_ms": round((s.due - start) * 1000, 1), "latency_ms": round(s.latency * 1000, 1), "kind": s.kind}
                      for s in sorted(writes, key=lambda s: s.latency, reverse=True)[:3]]
    return result


# -- the stores ----------------------------------------------------------------------------------


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def read_stores(legacy_url: str, service_url: str, run_id: str) -> dict[str, list[Row]]:
    """The run's rows of both stores: every product whose sku or marker starts with `run_id`."""
    pattern = f"{run_id}-%"
    queries = {
        "legacy": (legacy_url, "SELECT id, sku, coalesce(attributes->>'marker', ''), price, stock FROM public.catalog_product "
                   "WHERE sku LIKE %s OR attributes->>'marker' LIKE %s"),
        "service": (service_url, "SELECT id, sku, coalesce(attributes->>'marker', ''), price_cents / 100.0, stock "
                    "FROM catalog.products WHERE sku LIKE %s OR attributes->>'marker' LIKE %s"),
    }
    found: dict[str, list[Row]] = {}
    for store, (url, query) in queries.items():
        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute(query, (pattern, pattern))
                found[store] = [Row(int(i), sku, marker, _money(Decimal(price)), int(stock)) for i, sku, marker, price, stock in cur]
        finally:
            conn.close()
    return found


def wait_caught_up(specs: Mapping[str, SyncSpec], timeout: float = 60.0) -> dict[str, float]:
    """Wait until each stream (name → its sync spec) has applied the source's WAL position taken
    now, by its checkpoint or its slot's confirmed position: every change committed so far is in
    its target. Seconds each took."""
    taken: dict[str, float] = {}
    for name, spec in specs.items():
        started = time.monotonic()
        source = psycopg2.connect(spec.source_url)
        target = psycopg2.connect(spec.target_url)
        source.autocommit = target.autocommit = True
        try:
            with source.cursor() as cur:
                cur.execute("SELECT pg_current_wal_lsn()::text")
                wanted = _lsn(cur.fetchone()[0])

            def applied() -> bool:
                with source.cursor() as cur:
                    cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (spec.slot_name,))
                    row = cur.fetchone()
                flushed = _lsn(row[0]) if row and row[0] else 0
                return flushed >= wanted or load_checkpoint(target, spec.name).position[0] >= wanted

            try:
                wait_until(applied, timeout, 0.05, what=f"the {name} stream to apply what its source committed")
            except TimedOut as exc:
                raise RuntimeError(f"the {name} stream ({spec.slot_name}) did not catch up within {timeout:.0f}s; see its log") from exc
        finally:
            source.close()
            target.close()
        taken[name] = time.monotonic() - started
    return taken


def _lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)
