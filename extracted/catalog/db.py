"""The catalog store's engine and transactions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from extracted.catalog.exceptions import CatalogError

T = TypeVar("T")


def check_url(database_url: str) -> str:
    """`database_url` if it is a PostgreSQL URL; a `CatalogError` saying what is expected otherwise."""
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise CatalogError(
            f"{database_url!r} is not a database URL; expected e.g. postgresql://user@127.0.0.1:5432/catalog"
        ) from exc
    if url.get_backend_name() != "postgresql":
        raise CatalogError(f"{database_url!r} is not a PostgreSQL URL; the catalog store needs postgresql://...")
    return database_url


def engine_url(database_url: str) -> URL:
    """The SQLAlchemy URL, on psycopg2 (SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql://)."""
    url = make_url(check_url(database_url))
    return url.set(drivername="postgresql+psycopg2") if url.drivername == "postgresql" else url


def make_engine(database_url: str, *, pool_size: int = 40) -> Engine:
    # As many connections as requests can run database work at once (anyio's 40 worker threads),
    # kept open: overflow connections would be opened and closed under a steady load.
    return create_engine(engine_url(database_url), pool_size=pool_size, max_overflow=0, pool_recycle=3600)


def in_transaction(factory: sessionmaker[Session], fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(session, *args)` in one transaction: committed on return, rolled back on error."""
    with factory.begin() as session:
        return fn(session, *args)


async def run_db(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking store work for a request in the thread pool, in one transaction."""
    return await run_in_threadpool(in_transaction, request.app.state.sessions, fn, *args)
