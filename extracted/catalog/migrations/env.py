"""Alembic environment of the catalog store: online migrations only, schema `catalog`."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, text

from extracted.catalog.db import engine_url
from extracted.catalog.models import SCHEMA, Base

config = context.config


def _url() -> str:
    url = (
        config.attributes.get("database_url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("STRANGLER_CATALOG_DATABASE_URL")
    )
    if not url:
        raise RuntimeError(
            "no database URL for the catalog store: run `python -m extracted.catalog migrate --database-url URL` "
            "or `alembic -x url=postgresql://... upgrade head`"
        )
    return str(url)


def run_migrations_online() -> None:
    engine = create_engine(engine_url(_url()))
    try:
        with engine.connect() as connection:
            # The version table lives in the schema, so the schema must exist before Alembic looks.
            connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            connection.commit()
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                version_table_schema=SCHEMA,
                include_schemas=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("the catalog store supports online migrations only")
run_migrations_online()
