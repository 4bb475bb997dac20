"""The write switch through the real stack: façade, monolith, catalog, both CDC streams as processes,
the runner as a process (`strangler cutover writes`), writes under load checked in both stores."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg2
import pytest

from cdc.spec import load_spec
from cdc.status import status as sync_status
from common.postgres import EmbeddedPostgres
from common.waiting import wait_until
from cutover.writes import CRASH_ENV
from tests.cutover.write_support import WriteLoad, WriteStack, journal, result_json, write_stack


@pytest.fixture
def stack(pg: EmbeddedPostgres, tmp_path: Path) -> Iterator[WriteStack]:
    with write_stack(pg, tmp_path) as built:
        yield built


def _hold_in_file(stack: WriteStack) -> bool:
    return "hold:" in stack.routing.read_text()


def _pause_transactions(stack: WriteStack) -> list[list[str]]:
    """The last switch's journal entries from its hold to its switch intent, grouped by the transaction that wrote them."""
    conn = psycopg2.connect(stack.store_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT xmin::text, detail->>'step', detail->>'phase' FROM strangler.cutover_journal "
                        "WHERE kind = 'writes.step' ORDER BY id")
            rows = cur.fetchall()
    finally:
        conn.close()
    start = max(i for i, row in enumerate(rows) if row[1:] == ("hold", "intent"))
    end = max(i for i, row in enumerate(rows) if row[1:] == ("switch", "intent"))
    groups: list[list[str]] = []
    last = None
    for xmin, step, phase in rows[start + 1:end + 1]:
        if xmin != last:
            groups.append([])
            last = xmin
        groups[-1].append(f"{step}:{phase}")
    return groups


def test_write_cutover_and_rollback_under_load_lose_and_double_nothing(stack: WriteStack) -> None:
    load = WriteLoad(stack).start()
    try:
        time.sleep(1.0)
        dry = stack.run("writes", str(stack.plan), "--dry-run", "--json")
        estimate = result_json(dry)
        assert dry.returncode == 0 and estimate["outcome"] == "estimated", estimate
        assert 0 < estimate["estimate"]["pause_s"] < 1.0 and set(estimate["estimate"]["parts"]) == {"drain", "acks", "fence", "steps", "edit", "reload", "journal"}
        assert estimate["estimate"]["drain_from"] == "measured at the façade"  # the load's writes, timed by the façade
        assert stack.write_weights() == {"monolith": 100, "catalog": 0} and not _hold_in_file(stack)

        done = stack.run("writes", str(stack.plan), "--json")
        forward = result_json(done)
        assert done.returncode == 0 and forward["outcome"] == "switched", forward
        assert stack.write_weights() == {"monolith": 0, "catalog": 100} and not _hold_in_file(stack)
        steps = [item["step"] for item in forward["timeline"]]
        assert steps == ["preflight", "estimate", "hold", "acks", "fence", "ownership", "reverse", "switch", "verify"], steps
        assert forward["pause_s"] is not None and forward["pause_s"] < 1.0
        assert forward["verify"]["forward"]["identical"] and forward["verify"]["reverse"]["identical"], forward["verify"]
        # Inside the pause the journal commits three times: each step's entry rides with the next intent.
        assert _pause_transactions(stack) == [["hold:done", "acks:done", "fence:intent"], ["fence:done", "ownership:intent"],
                                             ["ownership:done", "reverse:done", "switch:intent"]]
        time.sleep(1.5)  # writes go to the catalog service now, and reach legacy by the reverse stream

        status = result_json(stack.run("status", str(stack.plan), "--json"))
        assert status["writes"]["writer"] == "catalog" and status["writes"]["conflicts"]["forward"]["count"] == 0
        # Every legacy write now is the reverse stream's: the forward stream applies none of them,
        # and the age of its last applied change passes the plan's 2 s limit.
        forward_spec = load_spec(stack.forward_spec, env=stack.env)
        wait_until(lambda: (sync_status(forward_spec).lag_seconds or 0) > 2.0, 10, 0.2, what="the forward reading to age")

        back = result_json(stack.run("rollback", str(stack.plan), "--writes", "--json"))
        assert back["outcome"] == "switched" and back["direction"] == "back", back
        lag_check = next(c for c in back["checks"] if c["name"] == "forward lag")
        assert lag_check["status"] == "ok" and "probe fence" in lag_check["detail"], lag_check
        assert stack.write_weights() == {"monolith": 100, "catalog": 0} and not _hold_in_file(stack)
        time.sleep(1.0)
        # The monolith creates again after the rollback (its sequence is past the ids the service
        # used); the load's own creates already show it, one more names it.
        with httpx.Client(base_url=stack.facade_url, cookies={"sessionid": load.session}, timeout=10) as client:
            response = client.post("/api/products", json={"sku": "after-rollback", "name": "After", "price": "2.00", "category": 1})
        assert response.status_code == 201, response.text

        again = result_json(stack.run("writes", str(stack.plan), "--json"))
        assert again["outcome"] == "switched", again
        switched_at = time.time()
        too_early = stack.run("finish", str(stack.plan))
        assert too_early.returncode == 1 and "of the soak" in too_early.stdout + too_early.stderr
        time.sleep(0.5)
    finally:
        load.stop()
    stack.converge()
    counts = load.check()
    kinds = {w.kind for w in load.writes}
    assert counts["acked"] > 100 and kinds == {"create", "update"}, counts
    assert counts["errors"] == 0, counts
    for side in ("legacy", "service"):
        assert counts[side]["lost"] == 0 and counts[side]["doubled"] == 0, counts

    time.sleep(max(0.0, 6.2 - (time.time() - switched_at)))  # the plan's soak is 6s
    finished = result_json(stack.run("finish", str(stack.plan), "--json"))
    assert finished["routes"] == ["catalog-read", "catalog-write"]
    text = stack.routing.read_text()
    assert text.count("to: catalog\n") == 2, text
    assert finished["stream"]["forward"] == "narrowed" and "stock" in finished["stream"]["detail"]
    left = finished["left_in_monolith"]
    assert left["tables_read_in_monolith"] == ["public.catalog_product"] and left["columns_written_by_monolith"] == {"catalog.products": ["stock"]}
    assert result_json(stack.run("status", str(stack.plan), "--json"))["writes"]["last"]["outcome"] == "finished"


# Every point a switch journals, in order: the runner is killed right after each. The directions
# alternate (a killed forward switch run again ends switched, so the next kill is of a switch
# back), so one stack takes them all and each stretch recovery tells apart (nothing held, hold
# placed, ownership switched, the switch journaled but not written, written) is hit both ways.
JOURNALED = [
    "preflight:check", "preflight:done", "estimate:done", "hold:intent", "hold:done", "acks:done", "fence:intent",
    "fence:done", "ownership:intent", "ownership:done", "reverse:done", "switch:intent", "switch:done", "verify:done",
]
CRASH_POINTS = [("forward" if i % 2 == 0 else "back", point) for i, point in enumerate(JOURNALED)]
# Inside the pause these ride in the next entry's transaction: killed there, the journal ends before them.
DEFERRED = {"hold:done", "acks:done", "fence:done", "ownership:done", "reverse:done"}


def _last_written(point: str) -> str:
    at = JOURNALED.index(point)
    return next(p for p in reversed(JOURNALED[:at + 1]) if p not in DEFERRED)


def test_a_runner_killed_at_any_journaled_step_is_finished_or_undone_by_the_next_run(stack: WriteStack) -> None:
    load = WriteLoad(stack, threads=2).start()
    try:
        time.sleep(0.5)
        for direction, crash_at in CRASH_POINTS:
            command = ("writes",) if direction == "forward" else ("rollback", "--writes")
            args = (command[0], str(stack.plan), *command[1:], "--json")
            stack.env[CRASH_ENV] = crash_at
            crashed = stack.start_runner(*args)
            _, stderr = crashed.communicate(timeout=60)  # SIGKILLed by itself right after journaling `crash_at`
            assert crashed.returncode == -signal.SIGKILL, (direction, crash_at, stderr)
            kinds = [(e["kind"], e.get("step"), e.get("phase")) for e in journal(stack)]
            step, phase = _last_written(crash_at).split(":")
            assert kinds[-1] == ("writes.step", step, phase), (direction, crash_at, kinds[-5:])
            stack.env.pop(CRASH_ENV, None)
            again = stack.run(*args)
            result = result_json(again)
            assert again.returncode == 0 and result["outcome"] == "switched" and result["recovered"], (crash_at, result)
            expected = {"monolith": 0, "catalog": 100} if direction == "forward" else {"monolith": 100, "catalog": 0}
            assert stack.write_weights() == expected and not _hold_in_file(stack), crash_at
        # A switch run to its end journals exactly the points killed at above.
        before = len(journal(stack))
        clean = result_json(stack.run("writes", str(stack.plan), "--json"))
        assert clean["outcome"] == "switched" and not clean["recovered"], clean
        # (The estimate's journal probes, timings of a journal write, are not steps.)
        points = [f"{e['step']}:{e['phase']}" for e in journal(stack)[before:]
                  if e["kind"] == "writes.step" and e.get("phase") != "probe"]
        assert list(dict.fromkeys(points)) == JOURNALED, points
    finally:
        load.stop()
    stack.converge()
    counts = load.check()
    for side in ("legacy", "service"):
        assert counts[side]["lost"] == 0 and counts[side]["doubled"] == 0, counts
    # Writes held by a killed runner waited out the lease or the budget at worst: 503 with Retry-After.
    assert all(w.status in (200, 201, 503) for w in load.writes), {w.status for w in load.writes}


@pytest.fixture
def slow_stack(pg: EmbeddedPostgres, tmp_path: Path) -> Iterator[WriteStack]:
    with write_stack(pg, tmp_path, slow_header="X-Slow") as built:
        yield built


def test_a_replica_that_never_acks_makes_the_runner_abort_within_the_budget(slow_stack: WriteStack) -> None:
    stack = slow_stack
    load = WriteLoad(stack, threads=1)
    slow: dict[str, int] = {}

    def slow_write() -> None:
        with httpx.Client(base_url=stack.facade_url, cookies={"sessionid": load.session}, timeout=20) as client:
            slow["status"] = client.patch("/api/products/7", json={"description": "slow"}, headers={"X-Slow": "1"}).status_code

    writer = threading.Thread(target=slow_write)
    writer.start()
    time.sleep(0.5)  # the slow write is in flight at the monolith for 8 s: the hold cannot drain
    done = stack.run("writes", str(stack.plan), "--json")
    result = result_json(done)
    writer.join(20)
    assert done.returncode == 1 and result["outcome"] == "aborted", result
    assert "acked" in result["reason"] and "in flight" in result["reason"], result["reason"]
    entries = journal(stack)
    held = next(e for e in entries if e.get("step") == "hold" and e.get("phase") == "done")
    released = next(e for e in entries if e.get("step") == "release")
    assert released["at"] - held["at"] <= 1.0 + 0.3  # the budget, and the release's own reload
    assert stack.write_weights() == {"monolith": 100, "catalog": 0} and not _hold_in_file(stack)
    assert slow["status"] == 200


def test_a_stopped_forward_applier_makes_the_preflight_refuse(stack: WriteStack) -> None:
    stack.stop_stream("forward")
    done = stack.run("writes", str(stack.plan))
    assert done.returncode == 1
    assert "refused" in done.stdout and "forward stream" in done.stdout, done.stdout
    assert f"strangler cdc run --spec {stack.forward_spec}" in done.stdout.replace("\n", " ").replace("  ", " ") or \
        "strangler cdc run --spec" in done.stdout, done.stdout
    assert stack.write_weights() == {"monolith": 100, "catalog": 0} and not _hold_in_file(stack)


def test_a_legacy_write_to_a_service_owned_column_after_the_switch_is_a_conflict(stack: WriteStack) -> None:
    done = stack.run("writes", str(stack.plan), "--json")
    assert result_json(done)["outcome"] == "switched", done.stdout
    conn = psycopg2.connect(stack.legacy_url)
    try:
        with conn, conn.cursor() as cur:  # a batch job bypassing the façade
            cur.execute("UPDATE public.catalog_product SET name = 'Bypassed', stock = 77 WHERE id = 9")
    finally:
        conn.close()
    stack.converge()
    conn = psycopg2.connect(stack.store_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT title, stock FROM catalog.products WHERE id = 9")
            title, stock = cur.fetchone()
    finally:
        conn.close()
    assert title != "Bypassed" and stock == 77  # stock stays the monolith's; the title is the service's
    status = result_json(stack.run("status", str(stack.plan), "--json"))
    conflicts = status["writes"]["conflicts"]["forward"]
    assert conflicts["count"] == 1 and "Bypassed" in conflicts["recent"][0], conflicts
    text = stack.run("status", str(stack.plan)).stdout
    assert "writes: on catalog" in text and "1 conflict(s) in the forward stream" in text, text


def test_the_ack_wait_adds_half_a_polling_interval_by_the_chance_a_write_is_in_flight() -> None:
    import math

    from cutover.writes import _POLL, _ack_wait

    assert _ack_wait(0.002, [{"inflight": 0.0}]) == pytest.approx(0.002)  # nothing in flight: the first round acks
    busy = _ack_wait(0.002, [{"inflight": 0.5}, {"inflight": 40.0}])
    assert busy == pytest.approx(0.002 + (0.002 + _POLL) / 2)
    three = _ack_wait(0.002, [{"inflight": 0.3}] * 3)  # a write in flight at any replica: the chances add up
    assert three == pytest.approx(0.002 + (1 - math.exp(-0.9)) * (0.002 + _POLL) / 2)
    unknown = _ack_wait(0.002, [{"inflight": None}])
    assert unknown == pytest.approx(0.002 + (1 - math.exp(-1)) * (0.002 + _POLL) / 2)
