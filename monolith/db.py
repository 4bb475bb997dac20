"""The monolith's database: one declarative base for every app, engine and transactions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from monolith.exceptions import MonolithError

T = TypeVar("T")


class Base(DeclarativeBase):
    """Declarative base shared by the apps' models (one metadata, like Django's app registry)."""


def make_engine(database_url: str, *, pool_size: int = 40) -> Engine:
    """An engine for `database_url` (PostgreSQL through psycopg2); refuses a malformed URL."""
    try:
        url = make_url(database_url)
    except ArgumentError as exc:
        raise MonolithError(
            f"{database_url!r} is not a database URL; expected e.g. postgresql://user@127.0.0.1:5432/shop"
        ) from exc
    if url.get_backend_name() != "postgresql":
        raise MonolithError(f"{database_url!r} is not a PostgreSQL URL; the monolith needs postgresql://...")
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    # As many connections as requests can run database work at once (anyio's 40 worker threads),
    # kept open: overflow connections would be opened and closed under a steady load.
    return create_engine(url, pool_size=pool_size, max_overflow=0, pool_recycle=3600)


def in_transaction(factory: sessionmaker[Session], fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(session, *args)` in one transaction: committed on return, rolled back on error."""
    with factory.begin() as session:
        return fn(session, *args)


async def run_db(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking database work for a request in the thread pool, in one transaction."""
    return await run_in_threadpool(in_transaction, request.app.state.sessions, fn, *args)
