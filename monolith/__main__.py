"""`python -m monolith migrate|seed|serve`: the legacy shop's management commands."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from monolith.app import ENV_DATABASE_URL
from monolith.db import make_engine
from monolith.exceptions import MonolithError

cli = typer.Typer(
    help="The sample legacy shop (Django-style monolith): create its tables, seed data, serve it.",
    no_args_is_help=True,
    add_completion=False,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url", envvar=ENV_DATABASE_URL, show_envvar=True,
        help="PostgreSQL URL of the monolith's database, e.g. postgresql://postgres@127.0.0.1:5432/shop.",
    ),
]


@contextmanager
def _known_failures() -> Iterator[None]:
    try:
        yield
    except MonolithError as exc:
        typer.echo(f"FAILED: {exc}", err=True)
        raise typer.Exit(1) from exc


def _require_url(database_url: str | None) -> str:
    if not database_url:
        raise MonolithError(f"no database URL: pass --database-url postgresql://... or set {ENV_DATABASE_URL}")
    return database_url


@cli.command()
def migrate(database_url: DatabaseUrl = None) -> None:
    """Create the shop's tables (accounts_user, django_session, catalog_*, orders_*); safe to re-run."""
    from monolith.migrate import migrate as run_migrate

    with _known_failures():
        engine = make_engine(_require_url(database_url))
        try:
            tables = run_migrate(engine)
        finally:
            engine.dispose()
    typer.echo(f"tables ready: {', '.join(tables)}")


@cli.command()
def seed(
    database_url: DatabaseUrl = None,
    products: Annotated[int, typer.Option(help="Products to create.")] = 1000,
    categories: Annotated[int, typer.Option(help="Categories to create (a quarter are top-level).")] = 20,
    users: Annotated[int, typer.Option(help="Normal users user1..N (password 'password'), besides admin/admin.")] = 10,
    orders: Annotated[int, typer.Option(help="Past orders, 1-3 items each.")] = 100,
    inactive_percent: Annotated[
        int, typer.Option(help="Share of products seeded as discontinued (is_active false: hidden from the API).")
    ] = 0,
    rng_seed: Annotated[int, typer.Option("--seed", help="Random seed: equal seeds give equal data.")] = 42,
    reset: Annotated[bool, typer.Option("--reset", help="Empty the shop's tables first instead of refusing.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print rows per table and seconds as JSON.")] = False,
) -> None:
    """Bulk-load deterministic shop data with COPY (100,000 products in a few seconds)."""
    from monolith.seed import SeedSizes
    from monolith.seed import seed as run_seed

    with _known_failures():
        sizes = SeedSizes(
            products=products, categories=categories, users=users, orders=orders, seed=rng_seed,
            inactive_percent=inactive_percent,
        )
        engine = make_engine(_require_url(database_url))
        try:
            report = run_seed(engine, sizes, reset=reset)
        finally:
            engine.dispose()
    if json_output:
        typer.echo(json.dumps({"rows": report.rows, "seconds": round(report.seconds, 3)}))
    else:
        rows = ", ".join(f"{table} {count}" for table, count in report.rows.items())
        typer.echo(f"seeded in {report.seconds:.2f}s: {rows}")


@cli.command()
def serve(
    database_url: DatabaseUrl = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8001,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = False,
) -> None:
    """Serve the shop (HTML pages and JSON API) under uvicorn."""
    import uvicorn

    with _known_failures():
        url = _require_url(database_url)
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1 FROM catalog_product LIMIT 1"))
        except OperationalError as exc:
            raise MonolithError(f"cannot use the database at {url}: {exc.orig}") from exc
        except Exception as exc:
            raise MonolithError(f"the database at {url} has no shop tables; run `python -m monolith migrate`") from exc
        finally:
            engine.dispose()
    # Workers re-create the app from the environment (uvicorn needs an import string for them).
    os.environ[ENV_DATABASE_URL] = url
    uvicorn.run(
        "monolith.app:create_app_from_env", factory=True, host=host, port=port, workers=workers,
        log_level="info", access_log=access_log,
    )


def main() -> None:
    cli(prog_name="python -m monolith")


if __name__ == "__main__":
    main()
