"""`python -m extracted.catalog migrate|copy-from-legacy|serve`: the catalog service's commands."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from extracted.catalog.app import DEFAULT_MONOLITH_URL, ENV_DATABASE_URL, ENV_DEMO_DISCREPANCY, ENV_DEMO_ERRORS, ENV_MONOLITH_URL
from common.extras import MissingExtraError
from extracted.catalog.db import check_url
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


@cli.command(
    epilog="Examples: `migrate --database-url URL` (upgrade), `migrate --sql --from 0001 --to head > upgrade.sql`, "
    "`migrate --sql --from head --to base` (the downgrade's SQL), `migrate --check` (on a private PostgreSQL), "
    "`migrate --check --database-url postgresql://postgres@127.0.0.1:5432/postgres --json`."
)
def migrate(
    database_url: DatabaseUrl = None,
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL of the migrations instead of running them (Alembic's offline "
                                         "mode); connects to nothing, needs no --database-url.")
    ] = False,
    from_rev: Annotated[
        str | None, typer.Option("--from", metavar="REV", help="With --sql: the revision the database is at (default base).")
    ] = None,
    to_rev: Annotated[
        str | None, typer.Option("--to", metavar="REV", help="The revision to go to (default head); with --sql, one "
                                                             "older than --from prints the downgrade.")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="On a scratch database (created on the --database-url server, or on a "
                                           "private embedded PostgreSQL without one, dropped at the end): upgrade, "
                                           "downgrade and upgrade every revision, comparing the schema after each "
                                           "step, then `alembic check` the models against the migrations.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="With --check: print the stages as JSON.")] = False,
    migrations: Annotated[
        Path | None, typer.Option("--migrations", metavar="DIR", file_okay=False,
                                  help="With --sql or --check: another migrations directory (a candidate "
                                       "revision to try) instead of the service's own.")
    ] = None,
) -> None:
    """Upgrade the store (schema `catalog`) to head, print the migrations' SQL, or check them."""
    with _known_failures():
        from extracted.catalog import migrate as migrations_api

        if sql and check:
            raise CatalogError("--sql and --check are two separate runs; pass one of them")
        if from_rev is not None and not sql:
            raise CatalogError(f"--from {from_rev} goes with --sql (a live database is upgraded from where it is)")
        if json_output and not check:
            raise CatalogError("--json goes with --check")
        if migrations is not None and not (sql or check):
            raise CatalogError("--migrations goes with --sql or --check; the store is migrated by its own migrations")
        if sql:
            if database_url:
                check_url(database_url)  # only its dialect matters; nothing is connected to
            typer.echo(migrations_api.migration_sql(from_rev, to_rev, migrations=migrations), nl=False)
            return
        if check:
            if to_rev is not None:
                raise CatalogError(f"--to {to_rev} does not go with --check, which checks every revision up to head")
            _run_check(database_url, migrations, json_output)
            return
        head = migrations_api.migrate(_require(database_url, "--database-url", ENV_DATABASE_URL), to_rev or "head")
    typer.echo(f"catalog store at revision {to_rev or head}")


def _run_check(database_url: str | None, migrations: Path | None, json_output: bool) -> None:
    from extracted.catalog.migrate import Stage, check_migrations

    def show(stage: Stage) -> None:
        mark = {True: "✓", False: "✗", None: "·"}[stage.ok]
        typer.echo(f"{mark} {stage.name}" + (f": {stage.detail}" if stage.detail else ""))

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # A `kill` (or a CI timeout) cleans up as Ctrl-C does: the scratch database is dropped.
    signal.signal(signal.SIGTERM, interrupt)
    try:
        report = check_migrations(database_url, migrations=migrations, on_stage=None if json_output else show)
    except KeyboardInterrupt:
        # check_migrations dropped its scratch database (and stopped its PostgreSQL) on the way out.
        typer.echo("FAILED: interrupted; the scratch database was dropped", err=True)
        raise typer.Exit(130) from None
    if json_output:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    elif report.ok:
        typer.echo(f"migrations OK: {len(report.stages)} stages on scratch database {report.database} "
                   f"({report.server}), dropped")
    if not report.ok:
        failed = report.failures
        typer.echo(f"FAILED: {failed[0].name}: {failed[0].detail}", err=True)
        raise typer.Exit(1)


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
    demo_errors: Annotated[
        int, typer.Option("--demo-errors", envvar=ENV_DEMO_ERRORS, show_envvar=True, min=0, max=100, metavar="PERCENT",
                          help="Answer 500 for the details of products whose id modulo 100 is below PERCENT, as a "
                               "bad build would, so the cutover's error-rate gate has something to catch. Demo only."),
    ] = 0,
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
    os.environ[ENV_DEMO_ERRORS] = str(demo_errors)
    uvicorn.run(
        "extracted.catalog.app:create_app_from_env", factory=True, host=host, port=port, workers=workers,
        log_level="info", access_log=access_log,
    )


def main() -> None:
    cli(prog_name="python -m extracted.catalog")


if __name__ == "__main__":
    main()
