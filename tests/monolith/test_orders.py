"""Orders: stock is taken in the same transaction, under row locks, all or nothing."""

from __future__ import annotations

import threading

import psycopg2

from tests.monolith.conftest import Shop, scalar


def _set_stock(url: str, product_id: int, stock: int) -> None:
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE catalog_product SET stock = %s, is_active = true WHERE id = %s", (stock, product_id))
    conn.close()


def test_placing_an_order_takes_the_stock(fresh_shop: Shop) -> None:
    _set_stock(fresh_shop.database_url, 1, 10)
    _set_stock(fresh_shop.database_url, 2, 5)
    price_1 = scalar(fresh_shop.database_url, "SELECT price FROM catalog_product WHERE id = 1")
    price_2 = scalar(fresh_shop.database_url, "SELECT price FROM catalog_product WHERE id = 2")
    with fresh_shop.login("user1", "password") as client:
        response = client.post("/api/orders", json={"items": [{"product_id": 1, "quantity": 3},
                                                               {"product_id": 2, "quantity": 5}]})
        assert response.status_code == 201, response.text
        order = response.json()
        assert order["status"] == "placed"
        assert order["total"] == f"{price_1 * 3 + price_2 * 5:.2f}"
        assert sorted((i["product_id"], i["quantity"]) for i in order["items"]) == [(1, 3), (2, 5)]
        assert client.get("/api/orders").json()[0] == order
    assert scalar(fresh_shop.database_url, "SELECT stock FROM catalog_product WHERE id = 1") == 7
    assert scalar(fresh_shop.database_url, "SELECT stock FROM catalog_product WHERE id = 2") == 0


def test_insufficient_stock_is_409_and_changes_nothing(fresh_shop: Shop) -> None:
    _set_stock(fresh_shop.database_url, 11, 10)
    _set_stock(fresh_shop.database_url, 12, 1)
    orders_before = scalar(fresh_shop.database_url, "SELECT count(*) FROM orders_order")
    with fresh_shop.login("user1", "password") as client:
        response = client.post("/api/orders", json={"items": [{"product_id": 11, "quantity": 2},
                                                               {"product_id": 12, "quantity": 2}]})
    assert response.status_code == 409
    assert response.json() == {"detail": "Insufficient stock for product 12."}
    assert scalar(fresh_shop.database_url, "SELECT stock FROM catalog_product WHERE id = 11") == 10
    assert scalar(fresh_shop.database_url, "SELECT stock FROM catalog_product WHERE id = 12") == 1
    assert scalar(fresh_shop.database_url, "SELECT count(*) FROM orders_order") == orders_before


def test_concurrent_orders_never_oversell(fresh_shop: Shop) -> None:
    _set_stock(fresh_shop.database_url, 3, 4)
    statuses: list[int] = []
    lock = threading.Lock()

    def buy() -> None:
        with fresh_shop.login("user2", "password") as client:
            status = client.post("/api/orders", json={"items": [{"product_id": 3, "quantity": 1}]}).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=buy) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] * 4 + [409] * 6
    assert scalar(fresh_shop.database_url, "SELECT stock FROM catalog_product WHERE id = 3") == 0


def test_orders_need_a_session_and_valid_items(fresh_shop: Shop) -> None:
    with fresh_shop.client() as anonymous:
        assert anonymous.post("/api/orders", json={"items": [{"product_id": 1, "quantity": 1}]}).status_code == 403
        assert anonymous.get("/api/orders").status_code == 403
    with fresh_shop.login("user3", "password") as client:
        before = client.get("/api/orders").json()
        for body in ({}, {"items": []}, {"items": [{"product_id": "1", "quantity": 1}]},
                     {"items": [{"product_id": 1, "quantity": 0}]}, {"items": [{"product_id": 10**6, "quantity": 1}]}):
            response = client.post("/api/orders", json=body)
            assert response.status_code == 400, body
            assert "items" in response.json()
        assert client.get("/api/orders").json() == before
