"""`python -m extracted.catalog migrate|copy-from-legacy|serve`: the catalog service's commands."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from extracted.catalog.app import DEFAULT_MONOLITH_URL, ENV_DATABASE_URL, ENV_DEMO_DISCREPANCY, ENV_MONOLITH_URL
from common.extras import MissingExtraError
from extracted.catalog.exceptions import CatalogError

cli = typer.Typer(
    help="The catalog service carved out of the monolith: migrate its store, fill it, serve its API.",
    no_args_is_help=True,
    add_completion=False,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url", envvar=ENV_DATABASE_URL, show_envvar=True,
        help="PostgreSQL URL of the catalog service's own database, e.g. postgresql://postgres@127.0.0.1:5432/catalog.",
    ),
]


@contextmanager
def _known_failures() -> Iterator[None]:
    try:
        yield
    except (CatalogError, MissingExtraError) as exc:
        typer.echo(f"FAILED: {exc}", err=True)
        raise typer.Exit(1) from exc


def _require(value: str | None, option: str, env: str) -> str:
    if not value:
        raise CatalogError(f"no {option}: pass {option} postgresql://... or set {env}")
    return value


@cli.command()
def migrate(database_url: DatabaseUrl = None) -> None:
    """Create or upgrade the store (schema `catalog`): `alembic upgrade head`."""
    with _known_failures():
        from extracted.catalog.migrate import migrate as run_migrate

        head = run_migrate(_require(database_url, "--database-url", ENV_DATABASE_URL))
    typer.echo(f"catalog store at revision {head}")


@cli.command("copy-from-legacy")
def copy_from_legacy(
    legacy_url: Annotated[
        str | None,
        typer.Option("--legacy-url", envvar="STRANGLER_MONOLITH_DATABASE_URL", show_envvar=True,
                     help="PostgreSQL URL of the monolith's database (read in one consistent snapshot)."),
    ] = None,
    database_url: DatabaseUrl = None,
    chunk_rows: Annotated[int, typer.Option(min=1, help="Products per COPY chunk (bounds memory).")] = 20_000,
    json_output: Annotated[bool, typer.Option("--json", help="Print rows per table and seconds as JSON.")] = False,
) -> None:
    """Replace the store's categories and products with a bulk copy of the legacy tables."""
    from extracted.catalog.copy import copy_from_legacy as run_copy

    from rich.console import Console
    from rich.progress import Progress

    with _known_failures(), Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("copying products", total=None)

        def progress(table: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"copying {table}")

        report = run_copy(
            _require(legacy_url, "--legacy-url", "STRANGLER_MONOLITH_DATABASE_URL"),
            _require(database_url, "--database-url", ENV_DATABASE_URL),
            chunk_rows=chunk_rows,
            progress=progress,
        )
    if json_output:
        typer.echo(json.dumps({"rows": report.rows, "seconds": round(report.seconds, 3)}))
    else:
        typer.echo(f"copied in {report.seconds:.2f}s: " + ", ".join(f"{t} {n}" for t, n in report.rows.items()))


@cli.command()
def serve(
    database_url: DatabaseUrl = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8002,
    monolith_url: Annotated[
        str, typer.Option(envvar=ENV_MONOLITH_URL, show_envvar=True,
                          help="Base URL of the monolith, whose /accounts/api/whoami validates sessions for writes."),
    ] = DEFAULT_MONOLITH_URL,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = False,
    demo_discrepancy: Annotated[
        bool, typer.Option("--demo-discrepancy", envvar=ENV_DEMO_DISCREPANCY, show_envvar=True,
                           help="Answer product details with a deliberate bug (prices rounded to whole units, "
                                "attributes missing) so shadow comparison has something to find. Demo only."),
    ] = False,
) -> None:
    """Serve the catalog API (same contract as the monolith's /api/products and /api/categories)."""
    import uvicorn
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from extracted.catalog.db import make_engine

    with _known_failures():
        url = _require(database_url, "--database-url", ENV_DATABASE_URL)
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1 FROM catalog.products LIMIT 1"))
        except SQLAlchemyError as exc:
            raise CatalogError(
                f"the catalog store at {url} is not usable ({type(exc).__name__}); "
                "is PostgreSQL up, and did `python -m extracted.catalog migrate` run?"
            ) from exc
        finally:
            engine.dispose()
    # Workers re-create the app from the environment (uvicorn needs an import string for them).
    os.environ[ENV_DATABASE_URL] = url
    os.environ[ENV_MONOLITH_URL] = monolith_url
    os.environ[ENV_DEMO_DISCREPANCY] = "1" if demo_discrepancy else ""
    uvicorn.run(
        "extracted.catalog.app:create_app_from_env", factory=True, host=host, port=port, workers=workers,
        log_level="info", access_log=access_log,
    )


def main() -> None:
    cli(prog_name="python -m extracted.catalog")


if __name__ == "__main__":
    main()
