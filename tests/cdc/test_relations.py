"""Every start compares the legacy tables with the spec and the service's tables."""

from __future__ import annotations

import pytest

from cdc.exceptions import SchemaChangedError
from cdc.pipeline import run
from cdc.relations import fits
from tests.cdc.apply_fixtures import execute, legacy_and_target, query, seed, spec_for

__all__ = ["legacy_and_target"]


def _catch_up(legacy: str, target: str) -> None:
    run(spec_for(legacy, target), until_caught_up=True, idle_timeout=0.5, heartbeat_interval=0.3)


def _changed_while_stopped(legacy: str, target: str, *statements: str) -> None:
    """A synced catalog, then `statements` on the legacy side while no applier runs (it never sees
    the tables as they were before)."""
    seed(legacy, 5)
    _catch_up(legacy, target)
    for statement in statements:
        execute(legacy, statement)


def _stock(target: str, pid: int) -> int:
    return int(query(target, "SELECT stock FROM catalog.products WHERE id = %s", (pid,))[0][0])


def test_a_column_retyped_while_no_applier_ran_stops_the_next_start(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    _changed_while_stopped(legacy, target, "ALTER TABLE catalog_product ALTER COLUMN stock TYPE text",
                           "UPDATE catalog_product SET stock = '12' WHERE id = 2")
    with pytest.raises(SchemaChangedError) as info:
        _catch_up(legacy, target)
    message = str(info.value)
    assert "legacy column public.catalog_product.stock is text (a string), which cannot fill catalog.products.stock" \
        in message, message
    assert "fix its mapping" in message and "then restart the applier" in message
    assert _stock(target, 2) == 2  # nothing applied: the slot still holds the change


def test_a_price_retyped_to_text_no_longer_fits_cents(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    _changed_while_stopped(legacy, target, "ALTER TABLE catalog_product ALTER COLUMN price TYPE text")
    with pytest.raises(SchemaChangedError, match=r"price is text \(a string\), which cannot fill catalog.products.price_cents"
                       r" \(int8\) through cents"):
        _catch_up(legacy, target)


def test_a_retype_the_mapping_still_holds_for_streams_on(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    _changed_while_stopped(legacy, target, "ALTER TABLE catalog_product ALTER COLUMN stock TYPE bigint",
                           "UPDATE catalog_product SET stock = 12 WHERE id = 2")
    _catch_up(legacy, target)
    assert _stock(target, 2) == 12


@pytest.mark.parametrize(("source", "target", "transform", "expected"), [
    (("int4", "N"), ("int8", "N"), None, True),
    (("numeric", "N"), ("int8", "N"), "cents", True),
    (("text", "S"), ("int8", "N"), "cents", False),
    (("uuid", "U"), ("text", "S"), None, True),
    (("uuid", "U"), ("bytea", "U"), None, False),
    (("json", "U"), ("jsonb", "U"), None, True),
    (("text", "S"), ("jsonb", "U"), "json", True),
    (("bool", "B"), ("int4", "N"), None, False),
    (("timestamptz", "D"), ("timestamp", "D"), None, True),
])
def test_which_legacy_types_fit_which_service_columns(
    source: tuple[str, str], target: tuple[str, str], transform: str | None, expected: bool
) -> None:
    assert fits(source, target, transform) is expected
