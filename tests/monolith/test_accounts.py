"""Login with a `sessionid` cookie, `whoami`, logout."""

from __future__ import annotations

from tests.monolith.conftest import Shop, scalar


def test_login_sets_session_and_csrf_cookies(shop: Shop) -> None:
    with shop.client() as client:
        response = client.post("/accounts/login", json={"username": "admin", "password": "admin"})
        assert response.status_code == 200
        assert response.json() == {"id": 1, "username": "admin", "is_staff": True}
        cookies = response.headers.get_list("set-cookie")
        assert len(cookies) == 2
        session = next(c for c in cookies if c.startswith("sessionid="))
        assert "HttpOnly" in session and "Path=/" in session
        assert any(c.startswith("csrftoken=") for c in cookies)
        key = client.cookies["sessionid"]
        assert scalar(shop.database_url, "SELECT count(*) FROM django_session WHERE session_key = %s", (key,)) == 1

        whoami = client.get("/accounts/api/whoami")
        assert whoami.status_code == 200
        assert whoami.json() == {"id": 1, "username": "admin", "is_staff": True}


def test_whoami_without_a_valid_session_is_401(shop: Shop) -> None:
    with shop.client() as client:
        assert client.get("/accounts/api/whoami").status_code == 401
        client.cookies.set("sessionid", "f" * 32)
        response = client.get("/accounts/api/whoami")
        assert response.status_code == 401
        assert response.json() == {"detail": "Authentication credentials were not provided."}


def test_wrong_password_is_refused(shop: Shop) -> None:
    with shop.client() as client:
        response = client.post("/accounts/login", json={"username": "user1", "password": "wrong"})
        assert response.status_code == 401
        assert "set-cookie" not in response.headers
        form = client.post("/accounts/login", data={"username": "user1", "password": "wrong"})
        assert form.status_code == 200 and "Invalid username or password." in form.text


def test_form_login_redirects_to_next_and_logout_ends_the_session(shop: Shop) -> None:
    with shop.client() as client:
        response = client.post(
            "/accounts/login", data={"username": "user1", "password": "password", "next": "/orders"}
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/orders"
        assert client.get("/accounts/api/whoami").json()["username"] == "user1"
        # Only local redirect targets.
        evil = client.post("/accounts/login", data={"username": "user1", "password": "password",
                                                     "next": "//evil.example/"})
        assert evil.headers["location"] == "/"

        logout = client.post("/accounts/logout")
        assert logout.status_code == 204
        assert client.get("/accounts/api/whoami").status_code == 401


def test_logout_ends_the_session_at_once_though_its_user_was_just_looked_up(shop: Shop) -> None:
    with shop.login("user1", "password") as client:
        key = client.cookies["sessionid"]
        assert client.get("/accounts/api/whoami").status_code == 200  # looked up, now reused for a while
        assert client.post("/accounts/logout").status_code == 204
    with shop.client(cookies={"sessionid": key}) as replay:
        assert replay.get("/accounts/api/whoami").status_code == 401


def test_a_worker_reuses_a_sessions_user_for_its_ttl_only() -> None:
    from monolith.accounts.sessions import Identity, IdentityCache

    now = [100.0]
    cache = IdentityCache(ttl=2.0, size=2, clock=lambda: now[0])
    admin = Identity(id=1, username="admin", is_staff=True)
    assert cache.get("k1") == (False, None)
    cache.put("k1", admin)
    cache.put("k2", None)  # an unknown key is remembered too: no transaction per request for it
    assert cache.get("k1") == (True, admin) and cache.get("k2") == (True, None)
    now[0] = 102.0
    assert cache.get("k1") == (False, None)  # looked up again once its ttl is over
    cache.put("k1", admin)
    cache.put("k3", admin)
    assert cache.get("k2") == (False, None)  # the oldest key went to keep the size
    cache.forget("k1")
    assert cache.get("k1") == (False, None)
