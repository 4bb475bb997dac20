"""The `strangler` command line. Commands live beside their area; this module only wires them."""

from __future__ import annotations

import sys
from importlib.metadata import version as package_version

import typer

from cdc.exceptions import CDCError
from cutover.exceptions import CutoverError
from facade.exceptions import FacadeError
from scripts import cdc_cmd, cutover_cmd, demo, facade_cmd, rehearse_cmd, routes_cmd, shadow_cmd
from common.extras import MissingExtraError
from common.postgres import PostgresError

KNOWN_ERRORS: tuple[type[Exception], ...] = (FacadeError, CDCError, PostgresError, MissingExtraError, CutoverError)

app = typer.Typer(
    name="strangler",
    help="Strangler-fig migrations: a routing façade, change data capture, shadow traffic and gated cutover.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(requested: bool) -> None:
    if requested:
        typer.echo(f"strangler {package_version('strangler')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the installed version and exit."),
) -> None:
    """Strangler-fig migrations: a routing façade, change data capture, shadow traffic and gated cutover."""


app.add_typer(facade_cmd.app, name="facade")
app.add_typer(routes_cmd.app, name="routes")
app.add_typer(cdc_cmd.app, name="cdc")
app.add_typer(shadow_cmd.app, name="shadow")
app.add_typer(cutover_cmd.app, name="cutover")
app.command("verify")(cdc_cmd.verify)
app.command("demo")(demo.demo)
app.command("rehearse")(rehearse_cmd.rehearse)


def main() -> None:
    """Entry point: run the CLI, turning the packages' own errors into `FAILED: ...`, exit 1."""
    try:
        app()
    except KNOWN_ERRORS as exc:
        typer.secho(f"FAILED: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
