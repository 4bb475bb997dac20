"""Server-rendered pages and the order form flow."""

from __future__ import annotations

import psycopg2

from tests.monolith.conftest import Shop, scalar


def test_product_list_and_detail_pages_render(shop: Shop) -> None:
    name = scalar(shop.database_url, "SELECT name FROM catalog_product WHERE id = 1")
    with shop.client() as client:
        home = client.get("/")
        assert home.status_code == 200
        assert home.headers["content-type"].startswith("text/html")
        assert home.headers["x-frame-options"] == "DENY"
        assert 'href="/products/1"' in home.text and 'rel="next"' in home.text
        detail = client.get("/products/1")
        assert detail.status_code == 200
        assert name in detail.text
        assert 'action="/orders/new"' in detail.text
        assert client.get("/products/999999").status_code == 404
        login = client.get("/accounts/login")
        assert login.status_code == 200 and 'name="password"' in login.text
        assert "csrftoken" in login.cookies


def test_order_form_flow(fresh_shop: Shop) -> None:
    conn = psycopg2.connect(fresh_shop.database_url)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE catalog_product SET stock = 2, is_active = true WHERE id = 25")
    conn.close()
    with fresh_shop.client() as client:
        anonymous = client.post("/orders/new", data={"product_id": "25", "quantity": "1"})
        assert anonymous.status_code == 303
        assert anonymous.headers["location"] == "/accounts/login?next=/products/25"
        assert client.get("/orders").status_code == 303

        client.post("/accounts/login", data={"username": "user3", "password": "password"})
        placed = client.post("/orders/new", data={"product_id": "25", "quantity": "2"})
        assert placed.status_code == 303 and placed.headers["location"] == "/orders"
        orders = client.get("/orders")
        assert orders.status_code == 200 and "product 25" in orders.text and "user3" in orders.text

        refused = client.post("/orders/new", data={"product_id": "25", "quantity": "1"})
        assert refused.status_code == 409
        assert "Insufficient stock for product 25." in refused.text
    assert scalar(fresh_shop.database_url, "SELECT stock FROM catalog_product WHERE id = 25") == 0
