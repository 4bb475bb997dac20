"""The sync spec: validation with file:line:col problems, and the catalog service's spec."""

from __future__ import annotations

import pytest

from cdc.spec import SpecError, load_spec, parse_spec
from tests.cdc.apply_fixtures import SYNC_YAML

GOOD = """\
version: 1
name: catalog
source: {url: "${LEGACY_URL:-postgresql://x/legacy}", topic_prefix: legacy}
target: {url: "${TARGET_URL}"}
tables:
  - source: public.catalog_product
    target: catalog.products
    key: [id]
    columns:
      id: id
      price: {to: price_cents, transform: cents}
"""


def test_catalog_sync_yaml_is_valid_and_maps_the_renames() -> None:
    spec = load_spec(SYNC_YAML, env={"STRANGLER_MONOLITH_DATABASE_URL": "postgresql://l", "STRANGLER_CATALOG_DATABASE_URL": "postgresql://c"})
    assert spec.name == "catalog" and spec.on_error == "dead_letter"
    assert spec.source_url == "postgresql://l" and spec.target_url == "postgresql://c"
    products = spec.table_for("public", "catalog_product")
    assert products is not None and products.target == "catalog.products"
    renames = {c.source: c.target for c in products.columns}
    assert renames["name"] == "title" and renames["price"] == "price_cents" and renames["is_active"] == "active"
    assert spec.topics() == ["legacy.public.catalog_category", "legacy.public.catalog_product"]
    assert spec.slot_name == "strangler_catalog"


def test_env_interpolation_with_default() -> None:
    spec = parse_spec(GOOD, env={"TARGET_URL": "postgresql://t"})
    assert spec.source_url == "postgresql://x/legacy" and spec.target_url == "postgresql://t"


@pytest.mark.parametrize(
    ("old", "new", "where", "needle"),
    [
        ("transform: cents", "transform: centz", "11:43", "unknown transform 'centz'"),
        ("key: [id]", "key: [sku]", "8:10", "key column 'sku' is not mapped"),
        ("name: catalog", "name: cata-log", "2:7", "'name' must be"),
        ("target: catalog.products", "target: a.b.c", "7:13", "'target' must be a service table"),
        ("    key: [id]\n", "    bogus: 1\n    key: [id]\n", "8:5", "unknown field 'bogus'"),
        ("transform: cents", "transform: nosuch.module:fn", "11:43", "cannot be imported"),
    ],
)
def test_problems_name_file_line_and_column(old: str, new: str, where: str, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(GOOD.replace(old, new), file="sync.yaml", env={})
    text = str(info.value)
    assert f"sync.yaml:{where}:" in text and needle in text, text


def test_every_problem_is_reported_at_once() -> None:
    bad = GOOD.replace("on_error", "x").replace("name: catalog", "name: 1\non_error: retry")
    with pytest.raises(SpecError) as info:
        parse_spec(bad, file="s.yaml", env={})
    assert len(info.value.problems) == 2


def test_invalid_yaml_has_a_position() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec("name: [unclosed\n", file="s.yaml", env={})
    assert str(info.value).startswith("s.yaml:2:")


def test_an_unreadable_spec_names_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(missing)
    assert str(info.value) == f"{missing}:1:1: cannot read the file: No such file or directory."
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\n")
    with pytest.raises(SpecError, match=r"binary.yaml:1:1: the file is not UTF-8 text"):
        load_spec(binary)
