"""Column ownership in the forward stream, on real logical replication into the catalog store."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cdc.apply import Applier
from cdc.pipeline import run
from cdc.spec import SpecError, SyncSpec, parse_spec
from cdc.status import status
from cdc.verify import verify
from tests.cdc.apply_fixtures import SYNC_YAML, collect_events, execute, legacy_and_target, query, seed, spec_for

__all__ = ["legacy_and_target"]

OWNED = {"catalog.products": ["title", "price_cents", "description"]}


def _catch_up(spec: SyncSpec) -> None:
    run(spec, until_caught_up=True, idle_timeout=0.5, heartbeat_interval=0.3)


def _enforced(legacy: str, target: str) -> SyncSpec:
    return spec_for(legacy, target).with_ownership("enforced", OWNED)


def _product(target: str, pid: int) -> tuple[str, int, int]:
    [(title, stock, price)] = query(target, "SELECT title, stock, price_cents FROM catalog.products WHERE id = %s", (pid,))
    return title, int(stock), int(price)


def _conflicts(target: str) -> list[tuple[str, dict[str, dict[str, object]], list[int]]]:
    return [(pk, cols, pos) for pk, cols, pos in query(
        target, "SELECT pk, columns, position FROM strangler.conflict ORDER BY id")]


def test_owned_by_service_in_the_spec_is_validated_with_the_fix() -> None:
    text = SYNC_YAML.read_text().replace(
        "    filter:\n", "    owned_by_service: [title, id, colour]\n    filter:\n"
    ) + "ownership: maybe\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text, file="sync.yaml", env={})
    message = str(info.value)
    assert "owned_by_service names key column 'id'" in message
    assert "owned_by_service names 'colour', which is not a mapped service column" in message
    assert "ownership 'maybe' is not known; use enforced" in message
    ok = parse_spec(SYNC_YAML.read_text().replace("    filter:\n", "    owned_by_service: [title]\n    filter:\n")
                    + "ownership: enforced\n", file="sync.yaml", env={})
    assert ok.ownership_enforced and ok.table_for("public", "catalog_product").owned_by_service == ("title",)
    assert not parse_spec(SYNC_YAML.read_text(), env={}).ownership_enforced
    by_legacy_name = ok.with_ownership("enforced", {"public.catalog_product": ["price_cents"]})
    assert by_legacy_name.table_for("public", "catalog_product").owned_by_service == ("price_cents",)
    with pytest.raises(SpecError, match="not a mapped service column"):
        ok.with_ownership("enforced", {"catalog.products": ["stock_level"]})


def test_enforced_ownership_applies_legacy_columns_and_records_a_write_to_a_service_column(
    legacy_and_target: tuple[str, str]
) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 5)
    spec = _enforced(legacy, target)
    _catch_up(spec)
    title, _, price = _product(target, 1)
    execute(legacy, "UPDATE catalog_product SET stock = 42 WHERE id = 1")  # an order decrements stock
    execute(legacy, "UPDATE catalog_product SET name = 'Batch job', stock = 41 WHERE id = 2")  # bypasses the façade
    _catch_up(spec)
    assert _product(target, 1) == (title, 42, price)
    assert _product(target, 2)[:2] == ("Product 2", 41)  # stock flowed, the title stayed the service's
    [(pk, columns, position)] = _conflicts(target)
    assert pk == "[2]" and columns == {"title": {"legacy": "Batch job", "service": "Product 2"}}
    assert position[0] > 0
    [(source_time,)] = query(target, "SELECT source_time IS NOT NULL FROM strangler.conflict")
    assert source_time

    st = status(spec)
    assert st.conflicts == 1 and st.ownership == "enforced"
    assert st.recent_conflicts[0]["key"] == [2] and st.recent_conflicts[0]["columns"]["title"]["legacy"] == "Batch job"
    assert any("service-owned columns" in w for w in st.warnings)

    result = verify(spec, wait=5)
    assert not result.identical
    products = next(t for t in result.tables if t.target == "catalog.products")
    assert products.mismatched == 1 and products.conflicted == 1
    assert "conflict #" in products.samples[0]["conflict"]["describe"]


def test_a_full_before_image_tells_a_legacy_change_from_a_service_write(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 3)
    execute(legacy, "ALTER TABLE catalog_product REPLICA IDENTITY FULL")
    spec = _enforced(legacy, target)
    _catch_up(spec)
    execute(target, "UPDATE catalog.products SET title = 'Service title' WHERE id = 1")  # the service's own write
    execute(legacy, "UPDATE catalog_product SET stock = 9 WHERE id = 1")  # legacy's name is older, but unchanged
    execute(legacy, "UPDATE catalog_product SET price = 5.00 WHERE id = 3")
    _catch_up(spec)
    assert _product(target, 1)[:2] == ("Service title", 9)
    [(pk, columns, _)] = _conflicts(target)
    assert pk == "[3]" and set(columns) == {"price_cents"} and columns["price_cents"]["legacy"] == 500


@pytest.mark.parametrize("ordered", [True, False], ids=["in-process", "kafka-like"])
def test_a_conflict_redelivered_after_a_crash_is_recorded_once(legacy_and_target: tuple[str, str], ordered: bool) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 3)
    spec = _enforced(legacy, target)
    _catch_up(spec)
    execute(legacy, "UPDATE catalog_product SET name = 'Batch job' WHERE id = 1")
    events = collect_events(spec, 1)
    # Applied and committed, then "killed" before the slot heard of it: the slot sends it again.
    with Applier(spec, ordered=ordered) as first:
        first.apply(events)
    with Applier(spec, ordered=ordered) as second:
        second.apply(events)
    _catch_up(spec)  # the real restart: the pipeline reads the slot's redelivery
    assert [pk for pk, _, _ in _conflicts(target)] == ["[1]"]
    assert _product(target, 1)[0] == "Product 1"
    assert status(spec).conflicts == 1


def test_with_ownership_off_every_column_flows_as_before(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    seed(legacy, 3)
    spec = spec_for(legacy, target).with_ownership("off", OWNED)
    _catch_up(spec)
    execute(legacy, "UPDATE catalog_product SET name = 'Batch job', stock = 1 WHERE id = 2")
    _catch_up(spec)
    assert _product(target, 2)[:2] == ("Batch job", 1)
    assert _conflicts(target) == []
    assert status(spec).conflicts == 0
    assert verify(spec, wait=5).identical


def test_cdc_status_prints_the_conflict_count_and_json_the_latest(legacy_and_target: tuple[str, str]) -> None:
    from scripts.cli import app

    legacy, target = legacy_and_target
    seed(legacy, 2)
    spec = _enforced(legacy, target)
    _catch_up(spec)
    execute(legacy, "UPDATE catalog_product SET description = 'rewritten' WHERE id = 1")
    _catch_up(spec)
    args = ["cdc", "status", "--spec", str(SYNC_YAML), "--source-url", legacy, "--target-url", target]
    out = CliRunner().invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["conflicts"] == 1 and data["recent_conflicts"][0]["columns"]["description"]["legacy"] == "rewritten"
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0 and "conflicts" in text.output and "1 (ownership off)" in text.output
