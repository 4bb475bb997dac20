"""The monolith's catalog JSON API: pagination, filters, ordering, detail, writes, errors."""

from __future__ import annotations

from decimal import Decimal

import httpx

from tests.monolith.conftest import SMALL, Shop, scalar

PRODUCT_KEYS = {"id", "sku", "name", "slug", "description", "price", "stock", "is_active", "category", "attributes",
                "created_at", "updated_at"}
NEW_PRODUCT = {"sku": "NEW-0001", "name": "Walnut Desk Organiser", "price": "24.50", "category": "kitchen",
               "stock": 3, "attributes": {"color": "walnut"}}


def test_list_first_page_is_drf_shaped_with_absolute_links(shop: Shop) -> None:
    active = scalar(shop.database_url, "SELECT count(*) FROM catalog_product WHERE is_active")
    with shop.client() as client:
        body = client.get("/api/products", headers={"Host": "shop.example:8080"}).json()
    assert body["count"] == active
    assert body["previous"] is None
    assert body["next"] == "http://shop.example:8080/api/products?page=2"
    assert len(body["results"]) == 20
    first = body["results"][0]
    assert set(first) == PRODUCT_KEYS
    assert set(first["category"]) == {"id", "slug", "name"}
    assert isinstance(first["price"], str) and len(first["price"].split(".")[1]) == 2
    assert first["created_at"].endswith("Z")
    assert [p["id"] for p in body["results"]] == sorted(p["id"] for p in body["results"])


def test_links_follow_forwarded_headers_and_keep_the_filters(shop: Shop) -> None:
    headers = {"X-Forwarded-Host": "www.shop.example", "X-Forwarded-Proto": "https"}
    with shop.client() as client:
        body = client.get("/api/products?page=2&page_size=5&ordering=-price&q=a", headers=headers).json()
    assert body["next"] == "https://www.shop.example/api/products?ordering=-price&page=3&page_size=5&q=a"
    assert body["previous"] == "https://www.shop.example/api/products?ordering=-price&page_size=5&q=a"


def test_last_page_has_no_next_and_pages_past_it_are_404(shop: Shop) -> None:
    with shop.client() as client:
        count = client.get("/api/products").json()["count"]
        last = -(-count // 100)
        body = client.get(f"/api/products?page_size=100&page={last}").json()
        assert body["next"] is None
        assert len(body["results"]) == count - (last - 1) * 100
        for page in (str(last + 1), "0", "abc"):
            response = client.get(f"/api/products?page_size=100&page={page}")
            assert response.status_code == 404
            assert response.json() == {"detail": "Invalid page."}
        assert len(client.get("/api/products?page_size=1000").json()["results"]) == 100


def test_filters(shop: Shop) -> None:
    with shop.client() as client:
        kitchen = client.get("/api/products?category=kitchen&page_size=100").json()
        assert kitchen["count"] > 0
        assert {p["category"]["slug"] for p in kitchen["results"]} == {"kitchen"}
        assert client.get("/api/products?category=no-such-category").json()["count"] == 0

        steel = client.get("/api/products?q=STEEL&page_size=100").json()
        assert steel["count"] > 0 and all("steel" in p["name"].lower() for p in steel["results"])
        assert client.get("/api/products?q=%25").json()["count"] == 0  # wildcards are literal

        ranged = client.get("/api/products?min_price=10.50&max_price=99.99&page_size=100").json()
        assert ranged["count"] > 0
        assert all(Decimal("10.50") <= Decimal(p["price"]) <= Decimal("99.99") for p in ranged["results"])

        in_stock = client.get("/api/products?in_stock=true&page_size=100").json()
        out_of_stock = client.get("/api/products?in_stock=false&page_size=100").json()
        assert all(p["stock"] > 0 for p in in_stock["results"])
        assert out_of_stock["count"] > 0 and all(p["stock"] == 0 for p in out_of_stock["results"])
        assert in_stock["count"] + out_of_stock["count"] == client.get("/api/products").json()["count"]


def test_ordering(shop: Shop) -> None:
    with shop.client() as client:
        for ordering, key, reverse in [("price", "price", False), ("-price", "price", True), ("-id", "id", True)]:
            results = client.get(f"/api/products?ordering={ordering}&page_size=100").json()["results"]
            values = [Decimal(p[key]) if key == "price" else p[key] for p in results]
            assert values == sorted(values, reverse=reverse), ordering
        names = [p["name"] for p in client.get("/api/products?ordering=name&page_size=50").json()["results"]]
        assert names[0] <= names[-1]


def test_bad_list_parameters_are_400_with_field_messages(shop: Shop) -> None:
    with shop.client() as client:
        response = client.get("/api/products?ordering=stock&min_price=cheap&in_stock=maybe")
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"ordering", "min_price", "in_stock"}
    assert body["min_price"] == ["Enter a number."]
    assert "'stock'" in body["ordering"][0]


def test_detail_and_404s(shop: Shop) -> None:
    inactive = scalar(shop.database_url, "SELECT min(id) FROM catalog_product WHERE NOT is_active")
    with shop.client() as client:
        product = client.get("/api/products/1")
        assert product.status_code == 200 and product.json()["id"] == 1
        for missing in (SMALL.products + 1, inactive, 2**40):
            response = client.get(f"/api/products/{missing}")
            assert response.status_code == 404
            assert response.json() == {"detail": "Not found."}


def test_categories(shop: Shop) -> None:
    with shop.client() as client:
        categories = client.get("/api/categories").json()
    assert len(categories) == SMALL.categories
    assert set(categories[0]) == {"id", "slug", "name", "parent_id"}
    assert any(c["parent_id"] is not None for c in categories)


def test_writes_need_a_staff_session(shop: Shop) -> None:
    with shop.client() as anonymous:
        response = anonymous.post("/api/products", json=NEW_PRODUCT)
        assert response.status_code == 403
        assert response.json() == {"detail": "Authentication credentials were not provided."}
    with shop.login("user1", "password") as user:
        for method, path in [("POST", "/api/products"), ("PATCH", "/api/products/1"), ("DELETE", "/api/products/1")]:
            response = user.request(method, path, json=NEW_PRODUCT)
            assert response.status_code == 403, (method, path)
            assert response.json() == {"detail": "You do not have permission to perform this action."}
    assert scalar(shop.database_url, "SELECT count(*) FROM catalog_product WHERE sku = 'NEW-0001'") == 0


def test_staff_create_update_delete(fresh_shop: Shop) -> None:
    with fresh_shop.login("admin", "admin") as admin:
        created = admin.post("/api/products", json=NEW_PRODUCT)
        assert created.status_code == 201, created.text
        product = created.json()
        assert product["price"] == "24.50" and product["slug"] == "walnut-desk-organiser"
        assert product["category"]["slug"] == "kitchen" and product["is_active"] is True
        assert admin.get(f"/api/products/{product['id']}").json() == product

        patched = admin.patch(f"/api/products/{product['id']}", json={"price": 19.9, "stock": "7"}).json()
        assert patched["price"] == "19.90" and patched["stock"] == 7 and patched["name"] == NEW_PRODUCT["name"]
        assert patched["updated_at"] > product["updated_at"]

        incomplete = admin.put(f"/api/products/{product['id']}", json={"name": "Only a name"})
        assert incomplete.status_code == 400
        assert incomplete.json() == {k: ["This field is required."] for k in ("sku", "price", "category")}
        replaced = admin.put(f"/api/products/{product['id']}", json={**NEW_PRODUCT, "name": "Oak Desk Organiser"})
        assert replaced.status_code == 200 and replaced.json()["name"] == "Oak Desk Organiser"

        assert admin.delete(f"/api/products/{product['id']}").status_code == 204
        assert admin.get(f"/api/products/{product['id']}").status_code == 404
        assert admin.delete(f"/api/products/{product['id']}").status_code == 404
    # Soft delete: the row stays for past orders.
    assert scalar(fresh_shop.database_url, "SELECT is_active FROM catalog_product WHERE sku = 'NEW-0001'") is False


def test_write_validation_errors(fresh_shop: Shop) -> None:
    with fresh_shop.login("admin", "admin") as admin:
        response = admin.post("/api/products", json={
            "sku": "", "name": "x" * 201, "price": "1.234", "stock": -1, "category": 999, "attributes": [1],
            "is_active": "perhaps",
        })
        assert response.status_code == 400
        assert response.json() == {
            "sku": ["This field may not be blank."],
            "name": ["Ensure this field has no more than 200 characters."],
            "price": ["Ensure that there are no more than 2 decimal places."],
            "stock": ["Ensure this value is greater than or equal to 0."],
            "is_active": ["Must be a valid boolean."],
            "attributes": ['Expected a dictionary of items but got type "list".'],
        }
        unknown = admin.post("/api/products", json={**NEW_PRODUCT, "category": 999})
        assert unknown.status_code == 400 and unknown.json() == {"category": ['Invalid pk "999" - object does not exist.']}
        duplicate = admin.post("/api/products", json={**NEW_PRODUCT, "sku": "SKU-00000001"})
        assert duplicate.status_code == 400 and duplicate.json() == {"sku": ["product with this sku already exists."]}
        not_a_dict = admin.post("/api/products", json=[NEW_PRODUCT])
        assert not_a_dict.status_code == 400 and "non_field_errors" in not_a_dict.json()


def test_malformed_json_is_400_never_500(fresh_shop: Shop) -> None:
    with fresh_shop.login("admin", "admin") as admin:
        for body in (b"{bad", b"\xff\xfe", b'{"sku": '):
            for method, path in [("POST", "/api/products"), ("PATCH", "/api/products/1"), ("POST", "/api/orders")]:
                response = admin.request(method, path, content=body, headers={"Content-Type": "application/json"})
                assert response.status_code == 400, (method, path, body, response.text)
                assert response.json()["detail"].startswith("JSON parse error")
    with httpx.Client(base_url=fresh_shop.url) as client:
        response = client.post("/accounts/login", content=b"{bad", headers={"Content-Type": "application/json"})
        assert response.status_code == 400


def test_detail_supports_conditional_get(shop: Shop) -> None:
    with shop.client() as client:
        first = client.get("/api/products/3")
        etag = first.headers["etag"]
        again = client.get("/api/products/3", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        assert client.get("/api/products/3", headers={"If-None-Match": '"other"'}).status_code == 200
        head = client.head("/api/products/3")
        assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == etag
