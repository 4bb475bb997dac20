"""The deliberate fault the demo switches on, so the cutover's error-rate gate has something to catch."""

from __future__ import annotations

import httpx

from extracted.catalog.app import create_app as create_catalog_app
from tests.extracted.conftest import Pair
from tests.support import serve


def test_demo_errors_fail_the_given_share_of_product_reads_only_when_switched_on(pair: Pair) -> None:
    with serve(create_catalog_app(pair.catalog_db, monolith_url=pair.monolith_url, demo_errors=30)) as faulty:
        for product_id in (1, 29, 30, 99, 100, 129, 130):
            correct = httpx.get(f"{pair.catalog_url}/api/products/{product_id}")
            answer = httpx.get(f"{faulty}/api/products/{product_id}")
            if product_id % 100 < 30:
                assert answer.status_code == 500
                assert "serve --demo-errors 30" in answer.json()["detail"]
            else:
                assert answer.status_code == correct.status_code
                assert answer.json() == correct.json()
        # Lists and categories are left alone: the fault is a bad build of the detail endpoint.
        assert httpx.get(f"{faulty}/api/products").status_code == 200
        assert httpx.get(f"{faulty}/api/categories").status_code == 200
