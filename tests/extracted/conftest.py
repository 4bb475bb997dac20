"""Catalog-service fixtures: a seeded legacy database, the catalog store migrated and filled by
the one-off copy, and both services served by uvicorn."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from extracted.catalog.app import create_app as create_catalog_app
from extracted.catalog.copy import copy_from_legacy
from extracted.catalog.migrate import migrate
from monolith.app import create_app as create_monolith_app
from monolith.seed import SeedSizes
from common.postgres import EmbeddedPostgres
from tests.monolith.conftest import seeded_database
from tests.support import serve

SIZES = SeedSizes(products=240, categories=8, users=3, orders=10, seed=11, inactive_percent=5)


@dataclass(frozen=True)
class Pair:
    """The monolith and the catalog service over the same data."""

    monolith_url: str
    catalog_url: str
    legacy_db: str
    catalog_db: str

    @contextlib.contextmanager
    def session(self, username: str, password: str) -> Iterator[str]:
        """A `sessionid` of the monolith for `username`."""
        with httpx.Client(base_url=self.monolith_url, timeout=10) as client:
            response = client.post("/accounts/login", json={"username": username, "password": password})
            assert response.status_code == 200, response.text
            yield client.cookies["sessionid"]


def _store(pg: EmbeddedPostgres, legacy: str, label: str) -> str:
    store = pg.create_database(f"catalog_{label}_{uuid.uuid4().hex[:8]}")
    migrate(store)
    copy_from_legacy(legacy, store)
    return store


@pytest.fixture(scope="session")
def legacy_db(pg: EmbeddedPostgres) -> str:
    """A seeded legacy database that no test changes (sessions aside)."""
    return seeded_database(pg.create_database(f"legacy_ro_{uuid.uuid4().hex[:8]}"), SIZES)


@pytest.fixture(scope="session")
def legacy_monolith(legacy_db: str) -> Iterator[str]:
    """The monolith on `legacy_db`; its base URL."""
    with serve(create_monolith_app(legacy_db)) as url:
        yield url


@pytest.fixture(scope="module")
def pair(pg: EmbeddedPostgres, legacy_db: str, legacy_monolith: str) -> Iterator[Pair]:
    """Both services on the same seeded data; the store is the module's own."""
    store = _store(pg, legacy_db, "ro")
    with serve(create_catalog_app(store, monolith_url=legacy_monolith)) as catalog_url:
        yield Pair(legacy_monolith, catalog_url, legacy_db, store)


@pytest.fixture
def fresh_pair(pg: EmbeddedPostgres) -> Iterator[Pair]:
    """Both services on data of their own, for tests that write to both."""
    sizes = SeedSizes(products=40, categories=4, users=2, orders=3, seed=11, inactive_percent=5)
    legacy = seeded_database(pg.create_database(f"legacy_rw_{uuid.uuid4().hex[:8]}"), sizes)
    store = _store(pg, legacy, "rw")
    with serve(create_monolith_app(legacy)) as monolith_url:
        with serve(create_catalog_app(store, monolith_url=monolith_url)) as catalog_url:
            yield Pair(monolith_url, catalog_url, legacy, store)
