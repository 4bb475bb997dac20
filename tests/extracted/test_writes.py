"""Writes through the catalog service: staff sessions checked with the monolith, same answers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from extracted.catalog.app import create_app
from extracted.catalog.sessions import Identity, MonolithSessions
from common.postgres import free_port
from tests.extracted.conftest import Pair
from tests.monolith.conftest import scalar
from tests.support import serve

NEW = {"sku": "NEW-1", "name": "Copper Pour-Over Kettle", "price": "39.95", "category": "garden", "stock": 4,
       "attributes": {"color": "copper", "volume_ml": 900}}
TIMES = ("created_at", "updated_at")


def _without_times(body: Any) -> Any:
    return {k: v for k, v in body.items() if k not in TIMES} if isinstance(body, dict) else body


def _write(base: str, session: str | None, method: str, path: str, body: Any) -> tuple[int, Any]:
    cookies = {"sessionid": session} if session else None
    with httpx.Client(base_url=base, timeout=10, cookies=cookies) as client:
        response = client.request(method, path, json=body)
    return response.status_code, (_without_times(response.json()) if response.content else None)


def test_staff_writes_through_the_catalog_service(pair: Pair) -> None:
    fresh_pair = pair  # this module's pair; no other test here reads what this one writes
    with fresh_pair.session("admin", "admin") as session:
        status, created = _write(fresh_pair.catalog_url, session, "POST", "/api/products", {**NEW, "sku": "NEW-2"})
        assert status == 201, created
        # Ids continue after the highest one CDC (here: the copy) brought in.
        assert created["id"] == 241 and created["price"] == "39.95" and created["category"]["slug"] == "garden"
        pid = created["id"]
        assert scalar(fresh_pair.catalog_db, "SELECT price_cents FROM catalog.products WHERE id = %s", (pid,)) == 3995

        status, patched = _write(fresh_pair.catalog_url, session, "PATCH", f"/api/products/{pid}",
                                 {"price": "41", "is_active": True, "name": "Copper Kettle"})
        assert status == 200 and patched["price"] == "41.00" and patched["name"] == "Copper Kettle"
        assert scalar(fresh_pair.catalog_db, "SELECT title FROM catalog.products WHERE id = %s", (pid,)) == "Copper Kettle"

        assert _write(fresh_pair.catalog_url, session, "DELETE", f"/api/products/{pid}", None) == (204, None)
        assert scalar(fresh_pair.catalog_db, "SELECT active FROM catalog.products WHERE id = %s", (pid,)) is False
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{fresh_pair.catalog_url}/api/products/{pid}").status_code == 404


def test_write_answers_match_the_monolith(fresh_pair: Pair) -> None:
    cases: list[tuple[str, str, Any]] = [
        ("POST", "/api/products", NEW),
        ("POST", "/api/products", NEW),  # duplicate sku now
        ("POST", "/api/products", {"sku": "X", "price": "1.001", "category": 77, "stock": "many"}),
        ("POST", "/api/products", [1, 2]),
        ("PUT", "/api/products/41", {"name": "Only a name"}),
        ("PUT", "/api/products/41", {**NEW, "name": "Renamed", "slug": "renamed"}),
        ("PATCH", "/api/products/2", {"stock": 0, "attributes": {"size": "L"}}),
        ("PATCH", "/api/products/2", {"sku": "SKU-00000003"}),
        ("PATCH", "/api/products/9999", {"stock": 1}),
        ("DELETE", "/api/products/3", None),
        ("DELETE", "/api/products/3", None),
    ]
    with fresh_pair.session("admin", "admin") as session:
        for method, path, body in cases:
            legacy = _write(fresh_pair.monolith_url, session, method, path, body)
            extracted = _write(fresh_pair.catalog_url, session, method, path, body)
            assert extracted == legacy, (method, path, body)


def test_writes_need_a_staff_session(pair: Pair) -> None:
    fresh_pair = pair
    assert _write(fresh_pair.catalog_url, None, "POST", "/api/products", NEW) == (
        403, {"detail": "Authentication credentials were not provided."})
    assert _write(fresh_pair.catalog_url, "0" * 32, "POST", "/api/products", NEW)[0] == 403
    with fresh_pair.session("user1", "password") as session:
        assert _write(fresh_pair.catalog_url, session, "PATCH", "/api/products/1", {"stock": 1}) == (
            403, {"detail": "You do not have permission to perform this action."})
    with httpx.Client(timeout=10) as client:
        malformed = client.post(f"{fresh_pair.catalog_url}/api/products", content=b"{oops",
                                headers={"Content-Type": "application/json"})
    assert malformed.status_code == 403  # permission is checked before the body is read, as DRF does
    with fresh_pair.session("admin", "admin") as session, httpx.Client(timeout=10) as client:
        malformed = client.post(f"{fresh_pair.catalog_url}/api/products", content=b"{oops",
                                headers={"Content-Type": "application/json", "Cookie": f"sessionid={session}"})
    assert malformed.status_code == 400 and malformed.json()["detail"].startswith("JSON parse error")
    assert scalar(fresh_pair.catalog_db, "SELECT count(*) FROM catalog.products WHERE sku = 'NEW-1'") == 0


def test_unreachable_monolith_is_503_for_writes_only(pair: Pair) -> None:
    fresh_pair = pair
    dead = f"http://127.0.0.1:{free_port()}"
    with serve(create_app(fresh_pair.catalog_db, monolith_url=dead)) as url, httpx.Client(timeout=10) as client:
        response = client.post(f"{url}/api/products", json=NEW, headers={"Cookie": "sessionid=" + "a" * 32})
        assert response.status_code == 503
        assert dead in response.json()["detail"]
        assert client.get(f"{url}/api/products/1").status_code == 200


@pytest.mark.parametrize("ttl_passed", [False, True])
def test_session_answers_are_cached_for_the_ttl(pair: Pair, ttl_passed: bool) -> None:
    now = [100.0]

    async def check(session: str) -> tuple[Identity | None, Identity | None]:
        sessions = MonolithSessions(pair.monolith_url, ttl=5.0, clock=lambda: now[0])
        try:
            before = await sessions.identity(session)
            with httpx.Client(base_url=pair.monolith_url, headers={"Cookie": f"sessionid={session}"}) as client:
                assert client.post("/accounts/logout").status_code == 204
            now[0] += 6.0 if ttl_passed else 4.0
            return before, await sessions.identity(session)
        finally:
            await sessions.aclose()

    with pair.session("admin", "admin") as session:
        before, after_logout = asyncio.run(check(session))
    assert before is not None and before.is_staff and before.username == "admin"
    assert (after_logout is None) is ttl_passed


def test_a_product_whose_category_has_not_arrived_yet_still_lists(pair: Pair) -> None:
    import psycopg2

    conn = psycopg2.connect(pair.catalog_db)
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE catalog.products SET category_id = 999, active = true WHERE id = 7")
    conn.close()
    with httpx.Client(base_url=pair.catalog_url, timeout=10) as client:
        listed = client.get("/api/products?page_size=10").json()
        detail = client.get("/api/products/7").json()
    assert listed["count"] == scalar(pair.catalog_db, "SELECT count(*) FROM catalog.products WHERE active")
    assert next(p for p in listed["results"] if p["id"] == 7)["category"] is None
    assert detail["category"] is None


def test_a_session_check_on_a_connection_the_monolith_just_closed_is_asked_again() -> None:
    """The monolith closes an idle keep-alive connection as the next check goes out on it (its
    timeout and the cache's TTL are both 5 s): the check is retried on a fresh connection, not
    reported to the client as a 503."""
    body = b'{"id": 1, "username": "admin", "is_staff": true}'
    answered: list[int] = []
    handlers: list[asyncio.Task[None]] = []

    async def check() -> tuple[Identity | None, Identity | None]:
        async def one_answer_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Answers the first request of each connection, keeping it open; the second request on
            # it is read and the connection dropped without an answer.
            handlers.append(asyncio.current_task())  # type: ignore[arg-type]
            try:
                await reader.readuntil(b"\r\n\r\n")
                answered.append(1)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # the client closed it first
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(one_answer_per_connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        now = [0.0]
        sessions = MonolithSessions(f"http://127.0.0.1:{port}", ttl=5.0, clock=lambda: now[0])
        try:
            first = await sessions.identity("s1")
            now[0] += 6.0
            return first, await sessions.identity("s1")
        finally:
            await sessions.aclose()
            await asyncio.wait_for(asyncio.gather(*handlers), 5)
            server.close()
            await server.wait_closed()

    first, second = asyncio.run(check())
    assert first is not None and second is not None and second.username == "admin"
    assert len(answered) == 2  # two connections, each answered once


def test_a_burst_of_checks_of_one_session_asks_the_monolith_once() -> None:
    """Writes held by a cutover are released together: their session checks share one call."""
    body = b'{"id": 1, "username": "admin", "is_staff": true}'
    asked: list[bytes] = []
    handlers: list[asyncio.Task[None]] = []

    async def check() -> list[Identity | None]:
        async def slow_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            handlers.append(asyncio.current_task())  # type: ignore[arg-type]
            try:
                while True:
                    asked.append(await reader.readuntil(b"\r\n\r\n"))
                    await asyncio.sleep(0.2)  # every other check arrives while this one is out
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # the client closed it
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(slow_answer, "127.0.0.1", 0)
        sessions = MonolithSessions(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", ttl=5.0)
        try:
            burst = [asyncio.create_task(sessions.identity("s1")) for _ in range(20)]
            await asyncio.sleep(0.05)
            burst[0].cancel()  # one client gone: the others still get the answer
            results = await asyncio.gather(*burst[1:])
            return [*results, await sessions.identity("s2")]
        finally:
            await sessions.aclose()
            await asyncio.wait_for(asyncio.gather(*handlers), 5)
            server.close()
            await server.wait_closed()

    results = asyncio.run(check())
    assert all(r is not None and r.username == "admin" for r in results)
    assert [b"s1" in a for a in asked] == [True, False] and b"s2" in asked[1]  # one call per session key
