"""The CDC side of the write cutover: the reverse stream, ownership by position, fences.

A forward (`sync.yaml`) and a reverse (`reverse.yaml`) `cdc run` stream at once between a legacy
database and the catalog store, on real logical replication.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from cdc.apply import Applier
from cdc.exceptions import CDCError, MappingError
from cdc.database import Connections
from cdc.fence import FenceTimeout, applied_lsn, emit_fence, ownership_state, probe_ownership, set_ownership, wait_applied
from cdc.mapping import RowMapper
from cdc.preflight import preflight
from cdc.spec import SpecError, SyncSpec, load_spec, parse_spec
from cdc.status import status
from cdc.verify import verify
from tests.cdc.apply_fixtures import ROOT, Background, collect_events, execute, legacy_and_target, query, running, seed, spec_for
from tests.support import wait_for

__all__ = ["legacy_and_target"]

REVERSE_YAML = ROOT / "extracted" / "catalog" / "reverse.yaml"
# The cutover plan's `writes.ownership` (extracted/catalog/cutover.yaml).
SERVICE_OWNED = {"catalog.products": ["title", "description", "price_cents", "active", "attributes"]}


def reverse_for(service: str, legacy: str) -> SyncSpec:
    return load_spec(REVERSE_YAML, env={}).with_urls(source_url=service, target_url=legacy)


def one(url: str, sql: str, params: object = None) -> object:
    rows = query(url, sql, params)
    return rows[0][0] if rows else None


def conflicts(url: str, spec: str) -> list[tuple[str, dict[str, dict[str, object]]]]:
    return [(pk, cols) for pk, cols in query(url, "SELECT pk, columns FROM strangler.conflict WHERE spec = %s ORDER BY id",
                                             (spec,))]


@contextmanager
def both_streams(legacy: str, service: str, rows: int = 5) -> Iterator[tuple[SyncSpec, SyncSpec, Background, Background]]:
    """`rows` products in the legacy database, copied forward; then the reverse stream started too."""
    seed(legacy, rows)
    execute(legacy, "SELECT setval('catalog_product_id_seq', %s)", (rows,))  # as the monolith's own inserts leave it
    forward, reverse = spec_for(legacy, service), reverse_for(service, legacy)
    with running(forward) as fwd:
        wait_for(lambda: one(service, "SELECT count(*) FROM catalog.products") == rows, timeout=30, what="the snapshot")
        with running(reverse) as rev:
            wait_for(lambda: applied_lsn(legacy, reverse.name) > 0, timeout=30, what="the reverse stream's start")
            yield forward, reverse, fwd, rev


# -- the spec -----------------------------------------------------------------------------------------


def test_the_reverse_spec_loads_and_its_mistakes_name_the_fix() -> None:
    spec = load_spec(REVERSE_YAML, env={})
    assert (spec.direction, spec.snapshot, spec.ownership, spec.slot_name) == (
        "reverse", "never", "enforced", "strangler_catalog_reverse")
    [products] = spec.tables
    assert (products.source, products.target) == ("catalog.products", "public.catalog_product")
    assert products.legacy_owned_targets == ("stock",)
    text = REVERSE_YAML.read_text()
    bad = (text.replace("snapshot: never", "snapshot: initial").replace("direction: reverse", "direction: reverse\nownership: off")
           .replace("owned_by_service: [sku, title,", "owned_by_service: [id, name, sku, title,"))
    with pytest.raises(SpecError) as info:
        parse_spec(bad, file="reverse.yaml", env={})
    message = str(info.value)
    assert "use snapshot: never" in message
    assert "a reverse spec always enforces ownership" in message
    assert "owned_by_service names 'name', which is not a mapped service column" in message  # legacy names refused
    assert "owned_by_service names key column 'id'" in message
    start, end = text.index("    owned_by_service:"), text.index("    # The legacy admin")
    with pytest.raises(SpecError, match="a reverse table needs 'owned_by_service'"):
        parse_spec(text[:start] + text[end:], file="reverse.yaml", env={})
    with pytest.raises(SpecError, match="always enforces ownership"):
        spec.with_ownership("off")
    assert spec.with_ownership("enforced", {"public.catalog_product": ["title"]}).tables[0].owned_by_service == ("title",)


def test_from_cents_gives_the_legacy_decimal_and_refuses_fractions() -> None:
    products = load_spec(REVERSE_YAML, env={}).tables[0]
    row = {"id": 7, "sku": "S", "title": "T", "slug": "t", "description": "", "price_cents": 1999, "stock": 3,
           "active": True, "category_id": 1, "attributes": {"a": 1}, "created_at": None, "updated_at": None}
    mapped = RowMapper(products).map(row)
    assert mapped is not None and mapped["price"] == Decimal("19.99") and mapped["name"] == "T" and mapped["is_active"]
    assert str(RowMapper(products).map({**row, "price_cents": 5})["price"]) == "0.05"  # type: ignore[index]
    with pytest.raises(MappingError, match="not a whole number of cents"):
        RowMapper(products).map({**row, "price_cents": Decimal("1.5")})


# -- both streams at once -----------------------------------------------------------------------------


def test_neither_stream_captures_what_the_other_applied(legacy_and_target: tuple[str, str]) -> None:
    legacy, service = legacy_and_target
    with both_streams(legacy, service) as (forward, reverse, fwd, rev):
        execute(legacy, "UPDATE catalog_product SET stock = 40 WHERE id = 1")  # an order, forward
        execute(service, "UPDATE catalog.products SET title = 'Renamed' WHERE id = 2")  # the service, reverse
        wait_for(lambda: one(service, "SELECT stock FROM catalog.products WHERE id = 1") == 40, what="forward apply")
        wait_for(lambda: one(legacy, "SELECT name FROM catalog_product WHERE id = 2") == "Renamed", what="reverse apply")
        # Fences on both sides: each applier has seen everything the other one wrote by then.
        wait_applied(service, forward.name, emit_fence(legacy, "loop check"), 10)
        wait_applied(legacy, reverse.name, emit_fence(service, "loop check"), 10)
    [forward_stats], [reverse_stats] = fwd.stats, rev.stats
    assert (forward_stats.applied, reverse_stats.applied) == (1, 1)  # an echo would be a second change each
    # The per-row positions name only the row each side changed itself.
    assert query(service, "SELECT pk FROM strangler.row_position") == [("[1]",)]
    assert query(legacy, "SELECT pk FROM strangler.row_position") == [("[2]",)]
    assert one(service, "SELECT title FROM catalog.products WHERE id = 2") == "Renamed"
    assert conflicts(service, forward.name) == [] and conflicts(legacy, reverse.name) == []


def test_fence_and_ownership_probe_on_connections_opened_before(legacy_and_target: tuple[str, str]) -> None:
    """The write switch's pause reuses connections it opened before; the ownership probe it times
    waits on the same checkpoint lock as `set_ownership` and records nothing."""
    import threading

    import psycopg2

    legacy, service = legacy_and_target
    seed(legacy, 2)
    forward = spec_for(legacy, service)
    with running(forward), Connections() as conns:
        wait_for(lambda: one(service, "SELECT count(*) FROM catalog.products") == 2, timeout=30, what="the snapshot")
        source, poll = conns.get(legacy), conns.get(service, autocommit=True)
        for _ in range(2):
            fence = emit_fence(legacy, "probe", conn=source)
            assert wait_applied(service, forward.name, fence, 10, conn=poll) >= 0
        assert conns.get(legacy) is source and not source.closed and not poll.closed
        assert conns.get(service) is not poll  # a transactional one beside the autocommit one

        blocker = psycopg2.connect(service)
        try:
            with blocker.cursor() as cur:
                cur.execute("SELECT 1 FROM strangler.checkpoint WHERE name = %s FOR UPDATE", (forward.name,))
            probed = threading.Event()
            thread = threading.Thread(target=lambda: (probe_ownership(service, forward.name, conn=conns.get(service)),
                                                      probed.set()))
            thread.start()
            assert not probed.wait(0.5), "the probe did not wait for the applier's checkpoint lock"
            blocker.rollback()
            thread.join(10)
            assert probed.is_set()
        finally:
            blocker.close()
        assert one(service, "SELECT count(*) FROM strangler.ownership") == 0
    assert source.closed and poll.closed


def test_ownership_switches_at_the_fence_in_a_running_forward_applier(legacy_and_target: tuple[str, str]) -> None:
    legacy, service = legacy_and_target
    seed(legacy, 3)
    # Full old rows: the stock update below does not count the price that legacy changed before it.
    execute(legacy, "ALTER TABLE catalog_product REPLICA IDENTITY FULL")
    forward = spec_for(legacy, service)
    with running(forward):
        wait_for(lambda: one(service, "SELECT count(*) FROM catalog.products") == 3, timeout=30, what="the snapshot")
        execute(legacy, "UPDATE catalog_product SET price = 7.00 WHERE id = 1")  # before the fence: applies
        fence = emit_fence(legacy, "write switch")
        wait_applied(service, forward.name, fence, 10)
        set_ownership(service, forward.name, enforced=True, from_lsn=fence, owned=SERVICE_OWNED, note="switch",
                      spec=forward)
        execute(legacy, "UPDATE catalog_product SET price = 8.00 WHERE id = 1")  # after it: a conflict
        execute(legacy, "UPDATE catalog_product SET stock = 33 WHERE id = 1")  # legacy-owned: applies
        wait_for(lambda: one(service, "SELECT stock FROM catalog.products WHERE id = 1") == 33, what="the stock update")
        assert one(service, "SELECT price_cents FROM catalog.products WHERE id = 1") == 700
        assert conflicts(service, forward.name) == [("[1]", {"price_cents": {"legacy": 800, "service": 700}})]
        assert status(forward).ownership == "enforced"

        # The rollback: ownership off from a later fence, and legacy writes flow again.
        back = emit_fence(legacy, "rollback")
        set_ownership(service, forward.name, enforced=False, from_lsn=back, note="rollback")
        execute(legacy, "UPDATE catalog_product SET price = 9.00 WHERE id = 1")
        wait_for(lambda: one(service, "SELECT price_cents FROM catalog.products WHERE id = 1") == 900,
                 what="the price after the rollback")
    state = ownership_state(service, forward.name)
    assert state["enforced"] is False and state["from_lsn"] == back and state["note"] == "rollback"
    assert [(h["enforced"], h["from_lsn"]) for h in state["history"]] == [(True, fence), (False, back)]
    assert state["history"][0]["owned"] == SERVICE_OWNED
    assert len(conflicts(service, forward.name)) == 1


def test_within_one_batch_each_transaction_takes_the_ownership_of_its_position(legacy_and_target: tuple[str, str]) -> None:
    legacy, service = legacy_and_target
    seed(legacy, 2)
    forward = spec_for(legacy, service)
    with running(forward):
        wait_for(lambda: one(service, "SELECT count(*) FROM catalog.products") == 2, timeout=30, what="the snapshot")
    execute(legacy, "UPDATE catalog_product SET name = 'Before' WHERE id = 1")
    fence = emit_fence(legacy, "switch")
    execute(legacy, "UPDATE catalog_product SET name = 'After' WHERE id = 2")
    # Recorded before the applier has seen either change; the position, not the time, decides.
    set_ownership(service, forward.name, enforced=True, from_lsn=fence, owned={"public.catalog_product": ["title"]},
                  spec=forward)
    events = collect_events(forward, 2)
    with Applier(forward) as applier:
        applier.apply(events)
    assert query(service, "SELECT id, title FROM catalog.products ORDER BY id") == [(1, "Before"), (2, "Product 2")]
    assert conflicts(service, forward.name) == [("[2]", {"title": {"legacy": "After", "service": "Product 2"}})]


def test_set_ownership_refuses_names_the_spec_does_not_map(legacy_and_target: tuple[str, str]) -> None:
    legacy, service = legacy_and_target
    forward = spec_for(legacy, service)
    with pytest.raises(SpecError, match="'colour', which is not a mapped service column"):
        set_ownership(service, forward.name, enforced=True, from_lsn=1, owned={"catalog.products": ["colour"]}, spec=forward)
    with pytest.raises(CDCError, match="no table of spec 'catalog' lists owned_by_service; give `owned`"):
        set_ownership(service, forward.name, enforced=True, from_lsn=1, spec=forward)
    assert ownership_state(service, forward.name)["history"] == []


def test_the_reverse_applier_writes_service_columns_and_records_a_stock_change_as_a_conflict(
    legacy_and_target: tuple[str, str]
) -> None:
    legacy, service = legacy_and_target
    execute(service, "ALTER TABLE catalog.products REPLICA IDENTITY FULL")
    execute(legacy, "INSERT INTO catalog_category (id, name, slug) VALUES (1, 'Tools', 'tools')")
    execute(legacy, "INSERT INTO catalog_product (id, sku, name, slug, price, category_id, created_at, updated_at) "
                    "VALUES (900, '__internal-x', 'placeholder', 'x', 0, 1, now(), now())")  # never the service's
    with both_streams(legacy, service) as (forward, reverse, _, _):
        execute(legacy, "UPDATE catalog_product SET stock = 20 WHERE id = 1")  # an order on the legacy side
        wait_for(lambda: one(service, "SELECT stock FROM catalog.products WHERE id = 1") == 20, what="forward stock")
        execute(service, "UPDATE catalog.products SET title = 'Hammer', price_cents = 1234, active = false WHERE id = 1")
        execute(service, "UPDATE catalog.products SET stock = 99 WHERE id = 2")  # a PUT setting stock
        wait_applied(legacy, reverse.name, emit_fence(service, "check"), 10)
        assert query(legacy, "SELECT name, price, is_active, stock FROM catalog_product WHERE id = 1") == [
            ("Hammer", Decimal("12.34"), False, 20)]
        assert one(legacy, "SELECT stock FROM catalog_product WHERE id = 2") == 2
        assert conflicts(legacy, reverse.name) == [("[2]", {"stock": {"service": 99, "legacy": 2}})]
        assert conflicts(service, forward.name) == []

        st = status(reverse)
        assert (st.direction, st.ownership, st.conflicts) == ("reverse", "enforced", 1)
        assert any("service write(s) to legacy-owned columns" in w for w in st.warnings)
        result = verify(reverse, wait=2)
        [products] = result.tables
        assert not result.identical
        assert (products.mismatched, products.conflicted, products.only_in_target) == (1, 1, 0)  # the placeholder: left out
        assert "stock legacy=2 service=99" in products.samples[0]["conflict"]["describe"]
        execute(service, "UPDATE catalog.products SET stock = 2 WHERE id = 2")
        assert verify(reverse, wait=5).identical


def test_a_reverse_insert_moves_the_legacy_sequence_a_delete_deletes_a_truncate_does_not(legacy_and_target: tuple[str, str]) -> None:
    legacy, service = legacy_and_target
    with both_streams(legacy, service) as (_, reverse, _, _):
        # The service's next id is the one the legacy sequence would hand out next.
        execute(service, "INSERT INTO catalog.products (id, sku, title, slug, description, price_cents, stock, active, "
                         "category_id, attributes, created_at, updated_at) VALUES (6, 'NEW-6', 'New', 'new', 'made by the "
                         "service', 250, 4, true, 1, '{\"n\": 6}', now(), now())")
        execute(service, "DELETE FROM catalog.products WHERE id = 3")
        wait_applied(legacy, reverse.name, emit_fence(service, "check"), 10)
        assert query(legacy, "SELECT sku, name, price, stock, attributes FROM catalog_product WHERE id = 6") == [
            ("NEW-6", "New", Decimal("2.50"), 4, {"n": 6})]
        assert one(legacy, "SELECT count(*) FROM catalog_product WHERE id = 3") == 0
        # The monolith inserts again (after a rollback) without a duplicate key.
        execute(legacy, "INSERT INTO catalog_product (sku, name, slug, price, category_id, created_at, updated_at) "
                        "VALUES ('MONO-1', 'Mono', 'mono', 1, 1, now(), now())")
        assert one(legacy, "SELECT id FROM catalog_product WHERE sku = 'MONO-1'") == 7
        # A truncate of the service's table never empties the monolith's.
        execute(service, "TRUNCATE catalog.products")
        wait_applied(legacy, reverse.name, emit_fence(service, "truncate"), 10)
        assert one(legacy, "SELECT count(*) FROM catalog_product") == 6
        [(reason,)] = query(legacy, "SELECT reason FROM strangler.dead_letter WHERE spec = %s", (reverse.name,))
        assert "is not carried into the legacy table public.catalog_product" in reason


# -- fences -------------------------------------------------------------------------------------------


def test_a_fence_on_an_idle_stream_is_passed_and_a_stopped_applier_times_out_saying_what_to_do(
    legacy_and_target: tuple[str, str]
) -> None:
    legacy, service = legacy_and_target
    seed(legacy, 2)
    forward = spec_for(legacy, service)
    with running(forward):
        wait_for(lambda: one(service, "SELECT count(*) FROM catalog.products") == 2, timeout=30, what="the snapshot")
        before = applied_lsn(service, forward.name)
        fence = emit_fence(legacy, "idle")
        assert fence > before
        waited = wait_applied(service, forward.name, fence, 10)
        assert waited >= 0 and applied_lsn(service, forward.name) >= fence
    stopped = emit_fence(legacy, "nobody applies this")
    with pytest.raises(FenceTimeout) as info:
        wait_applied(service, forward.name, stopped, 0.3)
    message = str(info.value)
    assert "bytes of WAL behind fence" in message and "strangler cdc run --spec" in message and "'catalog'" in message
    assert applied_lsn(service, forward.name) < stopped


def test_cdc_check_and_status_take_the_reverse_spec(legacy_and_target: tuple[str, str]) -> None:
    from scripts.cli import app

    legacy, service = legacy_and_target
    execute(service, "ALTER TABLE catalog.products REPLICA IDENTITY DEFAULT")  # the migrations set FULL
    args = ["--spec", str(REVERSE_YAML), "--source-url", service, "--target-url", legacy]
    out = CliRunner().invoke(app, ["cdc", "check", *args, "--json", "--wal-sample", "0.05"])
    assert out.exit_code == 0, out.output
    checks = {c["name"]: c for c in json.loads(out.output)["checks"]}
    assert checks["PostgreSQL version"]["status"] == "ok"
    assert "not captured again" in checks["PostgreSQL version"]["message"]
    assert checks["replica identity"]["status"] == "warn"
    assert "ALTER TABLE catalog.products REPLICA IDENTITY FULL" in checks["replica identity"]["fix"]
    assert checks["WAL headroom"]["message"].startswith("snapshot: never")
    out = CliRunner().invoke(app, ["cdc", "status", *args, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert (data["spec"], data["direction"], data["ownership"], data["slot_exists"]) == (
        "catalog_reverse", "reverse", "enforced", False)
    assert preflight(reverse_for(service, legacy), wal_sample_seconds=0.05).ok
