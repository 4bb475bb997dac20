"""The write checker's pure core: what a store lost or doubled of acknowledged writes, and the
clients' view of a switch window."""

from __future__ import annotations

from cutover.writecheck import Row, figures, judge
from cutover.writeload import POOL_STOCK, Sample

RUN = "Lt"


def pool(product_id: int, due: float = 0.0) -> Sample:
    marker = f"{RUN}-c{product_id}"
    return Sample("pool", marker, product_id, due, sent=due, latency=0.01, status=201, price="1.00")


def update(product_id: int, n: int, due: float, status: int = 200) -> Sample:
    return Sample("update", f"{RUN}-u{n}", product_id, due, sent=due, latency=0.01, status=status, price=f"{n}.00")


def row_after(create: Sample, last: Sample | None = None, stock: int = POOL_STOCK) -> Row:
    shown = last or create
    assert create.product_id is not None
    return Row(create.product_id, create.marker, shown.marker, shown.price, stock)


def test_a_store_with_every_acknowledged_write_loses_nothing() -> None:
    p = pool(1)
    updates = [update(1, n, float(n)) for n in (2, 3, 4)]
    order = Sample("order", "", 1, 5.0, sent=5.0, latency=0.01, status=201, quantity=1)
    verdict = judge("legacy", [p, *updates, order], [row_after(p, updates[-1], POOL_STOCK - 1)])
    assert (verdict.lost, verdict.doubled, verdict.rows) == (0, 0, 1)


def test_creates_missing_or_under_another_id_are_lost_and_a_marker_on_two_rows_is_doubled() -> None:
    gone = Sample("create", f"{RUN}-c7", 7, 1.0, sent=1.0, status=201, price="7.00")
    moved = Sample("create", f"{RUN}-c8", 8, 2.0, sent=2.0, status=201, price="8.00")
    twice = Sample("create", f"{RUN}-c9", 9, 0.5, sent=3.0, status=201, price="9.00")  # sent long after its slot
    failed = Sample("create", f"{RUN}-c10", None, 4.0, status=0, error="ConnectError")
    rows = [Row(8, f"{RUN}-c99", f"{RUN}-c99", "1.00", 0), Row(9, twice.marker, twice.marker, "9.00", 0),
            Row(19, "other", twice.marker, "9.00", 0)]
    verdict = judge("service", [gone, moved, twice, failed], rows)
    assert verdict.lost_creates == 2 and verdict.doubled == 1
    assert verdict.lost_writes == [gone, moved] and verdict.doubled_writes == [twice]
    assert "no row" in verdict.samples[0] and f"row has sku {RUN}-c99" in verdict.samples[1]
    assert verdict.within(1.5, 3.5) == {"lost": 1, "doubled": 1}


def test_an_update_overwritten_by_an_earlier_one_is_lost_but_a_later_unanswered_one_may_show() -> None:
    p = pool(1)
    first, second, third = update(1, 2, 1.0), update(1, 3, 2.0), update(1, 4, 3.0)
    # The store shows the first update: the two acknowledged after it are lost.
    verdict = judge("legacy", [p, first, second, third], [row_after(p, first)])
    assert verdict.lost_updates == 2 and verdict.lost_writes == [second, third]
    # An update whose answer never came may have been applied after the last acknowledged one.
    unanswered = update(1, 5, 4.0, status=0)
    assert judge("legacy", [p, first, second, unanswered], [row_after(p, unanswered)]).lost == 0
    # ... but the marker alone is not enough: the price must be that write's too.
    mixed = Row(1, p.marker, second.marker, first.price, POOL_STOCK)
    assert judge("legacy", [p, first, second], [mixed]).lost_updates == 2
    # A value from none of the run's writes loses every acknowledged update.
    foreign = Row(1, p.marker, "someone-else", "1.00", POOL_STOCK)
    assert judge("legacy", [p, first, second], [foreign]).lost_updates == 2


def test_stock_above_what_acknowledged_orders_leave_counts_lost_orders() -> None:
    p = pool(1)
    orders = [Sample("order", "", 1, float(n), sent=float(n), status=201, quantity=1) for n in range(3)]
    unanswered = Sample("order", "", 1, 9.0, sent=9.0, status=0, quantity=1)
    rows = [row_after(p, stock=POOL_STOCK - 1)]
    verdict = judge("service", [p, *orders, unanswered], rows)
    assert verdict.lost_orders == 2 and verdict.lost_writes == orders[1:]
    # An unanswered order may have taken stock: one less than the acknowledged ones leave is fine.
    assert judge("service", [p, *orders, unanswered], [row_after(p, stock=POOL_STOCK - 4)]).lost == 0


def test_figures_count_errors_and_the_latency_a_held_window_adds() -> None:
    steady = [Sample("update", f"{RUN}-u{n}", 1, n * 0.1, latency=0.010, status=200) for n in range(100)]
    held = [Sample("create", f"{RUN}-c{n}", n, 10.0 + n * 0.01, latency=0.4 - n * 0.01, status=201) for n in range(30)]
    failed = [Sample("read", "", 1, 10.2, latency=0.5, status=503), Sample("order", "", 1, 10.3, status=0, error="ReadTimeout")]
    result = figures([*steady, *held, *failed], (10.0, 11.0))
    assert result.writes == 30 and result.errors == 2
    assert result.errors_by_status == {"503": 1, "no answer": 1}
    assert round(result.before_ms["p50"], 3) == 10.0
    assert round(result.window_ms["max"], 3) == 400.0 and round(result.added_ms["max"], 3) == 390.0
    assert round(result.pause_s, 3) == 0.39

