"""Alembic environment of the catalog store, schema `catalog`.

Online, it migrates the database named by the URL. Offline (`alembic upgrade --sql`, or
`python -m extracted.catalog migrate --sql`) it writes the SQL and connects to nothing; a URL is
not needed then. `config.attributes["target_metadata"]` replaces the models that autogenerate and
`alembic check` compare against (the migration check's tests give it a changed model).
"""

from __future__ import annotations

import os
from typing import Any

from alembic import context
from sqlalchemy import create_engine, text

from extracted.catalog.db import engine_url
from extracted.catalog.models import SCHEMA, Base

config = context.config
# What both modes tell Alembic: the models to compare with, and where the version table lives.
options: dict[str, Any] = {
    "target_metadata": config.attributes.get("target_metadata", Base.metadata),
    "version_table_schema": SCHEMA,
    "include_schemas": True,
}


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


def run_migrations_offline() -> None:
    context.configure(dialect_name="postgresql", literal_binds=True, **options)
    with context.begin_transaction():
        if context.get_starting_revision_argument() in (None, "base"):
            # The version table lives in the schema, so the script creates the schema before it.
            context.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(engine_url(_url()))
    try:
        with engine.connect() as connection:
            # The version table lives in the schema, so the schema must exist before Alembic looks.
            connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            connection.commit()
            context.configure(connection=connection, **options)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
