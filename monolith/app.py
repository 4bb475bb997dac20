"""The monolith's ASGI application: the apps' URL patterns, templates, database, error handlers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.orm import sessionmaker
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.templating import Jinja2Templates

from monolith.accounts.sessions import IdentityCache
from monolith.accounts.urls import urlpatterns as accounts_urls
from monolith.catalog.urls import urlpatterns as catalog_urls
from monolith.core.middleware import SecurityHeadersMiddleware
from monolith.core.urls import urlpatterns as core_urls
from monolith.db import make_engine
from monolith.exceptions import ApiError, MonolithError
from monolith.orders.urls import urlpatterns as orders_urls
from monolith.web import api_error_response

ENV_DATABASE_URL = "STRANGLER_MONOLITH_DATABASE_URL"
TEMPLATES = Path(__file__).resolve().parent / "templates"


def create_app(database_url: str, *, pool_size: int = 40) -> Starlette:
    """The monolith for the database at `database_url` (connections are opened lazily)."""
    engine = make_engine(database_url, pool_size=pool_size)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.dispose()

    app = Starlette(
        routes=[*core_urls, *accounts_urls, *catalog_urls, *orders_urls],
        middleware=[Middleware(SecurityHeadersMiddleware)],
        exception_handlers={ApiError: api_error_response},
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.sessions = sessionmaker(engine, expire_on_commit=False)
    app.state.identities = IdentityCache()
    app.state.templates = Jinja2Templates(directory=str(TEMPLATES))
    return app


def create_app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` (several workers): the URL comes from the environment."""
    url = os.environ.get(ENV_DATABASE_URL)
    if not url:
        raise MonolithError(f"set {ENV_DATABASE_URL} to the monolith's database URL")
    return create_app(url)
