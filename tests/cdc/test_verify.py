"""Verify: the row-by-row diff finds planted differences and passes identical data."""

from __future__ import annotations

from typing import Any

from cdc.apply import Applier
from cdc.mapping import RowMapper
from cdc.verify import diff_rows, verify
from tests.cdc.apply_fixtures import T0, execute, legacy_and_target, product, spec_for

__all__ = ["legacy_and_target"]

SPEC = spec_for(None, None)


def _seed(legacy: str, target: str, n: int) -> None:
    execute(legacy, "INSERT INTO catalog_category (id, name, slug) VALUES (1, 'Tools', 'tools')")
    execute(
        legacy,
        "INSERT INTO catalog_product (id, sku, name, slug, description, price, stock, is_active, category_id, attributes,"
        " created_at, updated_at) SELECT g, 'SKU-' || g, 'Product ' || g, 'product-' || g, 'dddddddddd', 19.99, 5, true, 1,"
        " '{\"color\": \"red\"}', %s, %s FROM generate_series(1, %s) g",
        (T0, T0, n),
    )
    spec = spec_for(legacy, target)
    with Applier(spec, use_origin=False).open() as applier:
        mapper = RowMapper(spec.tables[1])
        applier.copy_rows(spec.tables[0], [{"id": 1, "name": "Tools", "slug": "tools", "parent_id": None}],
                          snapshot={}, position=(1, 0))
        applier.copy_rows(spec.tables[1], [mapper.map(product(i)) for i in range(1, n + 1)],  # type: ignore[misc]
                          snapshot={"done": True}, position=(1, 0))


def test_identical_data_verifies_clean(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    _seed(legacy, target, 50)
    result = verify(spec_for(legacy, target), wait=0)
    assert result.identical
    assert [t.matching for t in result.tables] == [1, 50]


def test_planted_mismatches_are_found_and_sampled(legacy_and_target: tuple[str, str]) -> None:
    legacy, target = legacy_and_target
    _seed(legacy, target, 20)
    execute(target, "UPDATE catalog.products SET price_cents = 1 WHERE id = 5")
    execute(target, "DELETE FROM catalog.products WHERE id = 7")
    execute(target, "INSERT INTO catalog.products SELECT 99, 'X', title, slug, description, price_cents, stock, active,"
                    " category_id, attributes, created_at, updated_at FROM catalog.products WHERE id = 1")
    result = verify(spec_for(legacy, target), wait=0)
    products = result.tables[1]
    assert not result.identical
    assert (products.matching, products.mismatched, products.only_in_source, products.only_in_target) == (18, 1, 1, 1)
    kinds = {s["kind"]: s for s in products.samples}
    assert kinds["mismatched"]["columns"] == {"price_cents": {"source": 1999, "target": 1}}
    assert kinds["only_in_source"]["key"] == [7] and kinds["only_in_target"]["key"] == [99]
    assert result.to_dict()["identical"] is False


def _rows(ids: list[int], **changes: Any) -> list[dict[str, Any]]:
    return [product(i, **changes) for i in ids]


def test_diff_rows_is_symmetric_in_counts() -> None:
    table = SPEC.tables[1]
    mapper = RowMapper(table)
    source = _rows([1, 2, 3, 5])
    target = [mapper.map(r) for r in _rows([2, 3, 4])]
    diff = diff_rows(table, iter(source), iter(target))  # type: ignore[arg-type]
    assert (diff.matching, diff.only_in_source, diff.only_in_target) == (2, 2, 1)
    # filtered legacy rows are expected to be absent from the target
    filtered = diff_rows(table, iter(_rows([1], sku="__internal-1")), iter([]))
    assert filtered.identical
