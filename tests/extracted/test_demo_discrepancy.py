"""The deliberate discrepancy the demo switches on, so shadow traffic has something to find."""

from __future__ import annotations

import httpx

from extracted.catalog.app import create_app as create_catalog_app
from tests.extracted.conftest import Pair
from tests.support import serve


def test_demo_discrepancy_changes_prices_and_drops_attributes_only_when_switched_on(pair: Pair) -> None:
    with serve(create_catalog_app(pair.catalog_db, monolith_url=pair.monolith_url, demo_discrepancy=True)) as buggy:
        differing_prices = 0
        for product_id in range(1, 30):
            legacy = httpx.get(f"{pair.monolith_url}/api/products/{product_id}")
            correct = httpx.get(f"{pair.catalog_url}/api/products/{product_id}")
            wrong = httpx.get(f"{buggy}/api/products/{product_id}")
            if legacy.status_code != 200:
                continue
            assert correct.json() == legacy.json()
            bad = wrong.json()
            assert bad["price"].endswith(".00")
            differing_prices += bad["price"] != legacy.json()["price"]
            assert ("attributes" in bad) == (legacy.json()["stock"] == 0)
        assert differing_prices > 10
