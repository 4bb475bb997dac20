"""The `strangler` command line. Commands live beside their area; this module only wires them.

Each command's module is imported only when that command runs (`_LazyGroup`): `strangler cutover
status` does not pay for the façade server, the demo stack or the CDC pipeline. `strangler --help`
lists every command, so it imports them all.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import version as package_version
from typing import Any

import typer
from typer.core import TyperGroup

from cdc.exceptions import CDCError
from common.extras import MissingExtraError
from common.postgres import PostgresError
from cutover.exceptions import CutoverError
from facade.exceptions import FacadeError

KNOWN_ERRORS: tuple[type[Exception], ...] = (FacadeError, CDCError, PostgresError, MissingExtraError, CutoverError)

# name → (module, attribute): a Typer app (a group of commands) or a function (one command).
COMMANDS: dict[str, tuple[str, str]] = {
    "facade": ("scripts.facade_cmd", "app"),
    "routes": ("scripts.routes_cmd", "app"),
    "cdc": ("scripts.cdc_cmd", "app"),
    "shadow": ("scripts.shadow_cmd", "app"),
    "cutover": ("scripts.cutover_cmd", "app"),
    "verify": ("scripts.cdc_cmd", "verify"),
    "demo": ("scripts.demo", "demo"),
    "rehearse": ("scripts.rehearse_cmd", "rehearse"),
}


def load_command(name: str) -> Any:
    """The click command `name` of `COMMANDS`, its module imported now, built as `add_typer` or
    `command` on the top-level app would build it."""
    module, attribute = COMMANDS[name]
    target: Any = getattr(importlib.import_module(module), attribute)
    wrapper = typer.Typer(add_completion=False)
    wrapper.callback()(lambda: None)  # a group even for a single command: the command is taken out of it
    if isinstance(target, typer.Typer):
        wrapper.add_typer(target, name=name)
    else:
        wrapper.command(name)(target)
    group: Any = typer.main.get_command(wrapper)
    return group.commands[name]


class _LazyGroup(TyperGroup):
    """A group whose subcommands are imported on first use (see the module's docstring)."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *(name for name in COMMANDS if name not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            self.commands[cmd_name] = load_command(cmd_name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="strangler",
    help="Strangler-fig migrations: a routing façade, change data capture, shadow traffic and gated cutover.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_LazyGroup,
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


def main() -> None:
    """Entry point: run the CLI, turning the packages' own errors into `FAILED: ...`, exit 1."""
    try:
        app()
    except KNOWN_ERRORS as exc:
        typer.secho(f"FAILED: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
