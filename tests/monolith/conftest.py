"""Monolith fixtures: a migrated and seeded shop database, and the shop served by uvicorn."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg2
import pytest

from monolith.app import create_app
from monolith.db import make_engine
from monolith.migrate import migrate
from monolith.seed import SeedSizes, seed
from common.postgres import EmbeddedPostgres
from tests.support import serve

SMALL = SeedSizes(products=300, categories=8, users=3, orders=20, seed=7, inactive_percent=4)


def seeded_database(url: str, sizes: SeedSizes = SMALL) -> str:
    engine = make_engine(url)
    try:
        migrate(engine)
        seed(engine, sizes)
    finally:
        engine.dispose()
    return url


def scalar(url: str, statement: str, params: tuple[object, ...] = ()) -> object:
    """One value from the database at `url` (a fresh connection: sees committed data only)."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


@dataclass(frozen=True)
class Shop:
    """A running monolith and its database."""

    url: str
    database_url: str

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def login(self, username: str, password: str) -> Iterator[httpx.Client]:
        """A client holding the session cookie of `username`."""
        with self.client() as client:
            response = client.post("/accounts/login", json={"username": username, "password": password})
            assert response.status_code == 200, response.text
            yield client


@pytest.fixture(scope="session")
def shop_db(pg: EmbeddedPostgres) -> str:
    """A seeded shop database shared by the read-only tests."""
    return seeded_database(pg.create_database(f"shop_ro_{uuid.uuid4().hex[:8]}"))


@pytest.fixture(scope="session")
def shop(shop_db: str) -> Iterator[Shop]:
    """The monolith on the shared database (tests must not change its data)."""
    with serve(create_app(shop_db)) as url:
        yield Shop(url, shop_db)


@pytest.fixture(scope="session")
def fresh_shop(pg: EmbeddedPostgres) -> Iterator[Shop]:
    """The monolith on a database of its own, for tests that write: each test writes rows
    (products, stock, skus, a user's orders) that no other test reads."""
    url = seeded_database(pg.create_database(f"shop_rw_{uuid.uuid4().hex[:8]}"))
    with serve(create_app(url)) as base:
        yield Shop(base, url)
