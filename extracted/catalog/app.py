"""The catalog service's ASGI application."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.orm import sessionmaker
from starlette.applications import Starlette

from extracted.catalog.db import make_engine
from extracted.catalog.exceptions import ApiError, CatalogError
from extracted.catalog.sessions import MonolithSessions, SessionValidator
from extracted.catalog.views import routes
from extracted.catalog.web import api_error_response

ENV_DATABASE_URL = "STRANGLER_CATALOG_DATABASE_URL"
ENV_MONOLITH_URL = "STRANGLER_MONOLITH_URL"
ENV_DEMO_DISCREPANCY = "STRANGLER_CATALOG_DEMO_DISCREPANCY"
ENV_DEMO_ERRORS = "STRANGLER_CATALOG_DEMO_ERRORS"
DEFAULT_MONOLITH_URL = "http://127.0.0.1:8001"


def create_app(
    database_url: str,
    *,
    monolith_url: str = DEFAULT_MONOLITH_URL,
    sessions: SessionValidator | None = None,
    pool_size: int = 40,
    demo_discrepancy: bool = False,
    demo_errors: int = 0,
) -> Starlette:
    """The catalog service on the store at `database_url`; sessions are checked with the monolith
    at `monolith_url` unless a `SessionValidator` is given."""
    engine = make_engine(database_url, pool_size=pool_size)
    validator: SessionValidator = sessions or MonolithSessions(monolith_url)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await validator.aclose()
            engine.dispose()

    app = Starlette(routes=routes, exception_handlers={ApiError: api_error_response}, lifespan=lifespan)
    app.state.engine = engine
    app.state.sessions = sessionmaker(engine, expire_on_commit=False)
    app.state.session_validator = validator
    app.state.demo_discrepancy = demo_discrepancy
    app.state.demo_errors = demo_errors
    return app


def create_app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` (several workers): settings come from the environment."""
    url = os.environ.get(ENV_DATABASE_URL)
    if not url:
        raise CatalogError(f"set {ENV_DATABASE_URL} to the catalog store's database URL")
    return create_app(
        url,
        monolith_url=os.environ.get(ENV_MONOLITH_URL, DEFAULT_MONOLITH_URL),
        demo_discrepancy=os.environ.get(ENV_DEMO_DISCREPANCY, "") == "1",
        demo_errors=int(os.environ.get(ENV_DEMO_ERRORS, "") or 0),
    )
