"""`strangler routes check|diff|shift|schema`: validate, compare and edit `routing.yaml`.

Thin over the façade's library: `facade.config` validates, `facade.diff` compares two files,
`facade.edit` shifts weights keeping comments and writes atomically. `check_routes` and the
schema writer are plain functions usable from Python; the commands parse, call and print.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from facade.config import FacadeConfig, Problem, check_file, json_schema, load_config
from facade.diff import Change, diff_files
from facade.edit import ShiftResult, shift_weights, write_atomically

__all__ = [
    "Change",
    "CheckResult",
    "ShiftResult",
    "app",
    "check_routes",
    "diff_files",
    "schema_text",
    "shift_weights",
    "write_schema",
]

app = typer.Typer(no_args_is_help=True, help="Validate, compare and edit routing.yaml (comments are kept).")

# --------------------------------------------------------------------------------------------
# check


@dataclass(frozen=True)
class CheckResult:
    """The outcome of checking one routing file."""

    file: str
    problems: list[Problem]
    config: FacadeConfig | None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: what the file declares, or how many problems it has."""
        if self.config is None:
            count = len(self.problems)
            return f"{self.file}: {count} problem{'s' if count != 1 else ''}"
        config = self.config
        routes = len(config.routes)
        splits = [
            f"{route.id} " + ", ".join(f"{name} {weight:g}%" for name, weight in route.to.items())
            for route in config.routes
            if len(route.to) > 1
        ]
        text = (
            f"{self.file}: OK, {len(config.upstreams)} upstreams ({', '.join(config.upstreams)}), "
            f"{routes} route{'s' if routes != 1 else ''} and the default to {config.default.to}"
        )
        return text + (f"; {'; '.join(splits)}" if splits else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "ok": self.ok,
            "summary": self.summary(),
            "problems": [problem.as_dict() for problem in self.problems],
        }


def check_routes(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> CheckResult:
    """Validate a routing file; every problem is reported, none raised."""
    problems = check_file(path, env=env)
    config = None if problems else load_config(path, env=env)
    return CheckResult(str(path), problems, config)


# --------------------------------------------------------------------------------------------
# schema


def schema_text() -> str:
    """The JSON Schema of routing.yaml, as committed in routing.schema.json."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: str | os.PathLike[str]) -> Path:
    """Write the JSON Schema to `path` (atomically); returns the path."""
    target = Path(path)
    write_atomically(target, schema_text())
    return target


# --------------------------------------------------------------------------------------------
# CLI


def _parse_to(values: list[str]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            weight = float(number.strip().rstrip("%"))
        except ValueError:
            weight = float("nan")
        if not sep or not name.strip() or weight != weight:
            raise typer.BadParameter(f"{value!r} is not NAME=PERCENT, e.g. catalog=25", param_hint="--to")
        weights[name.strip()] = weight
    return weights


@app.command("check")
def check_command(
    file: Path = typer.Argument(Path("routing.yaml"), help="The routing file to validate."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Validate a routing file: exit 0 with a summary, or exit 1 listing every FILE:LINE:COL: problem."""
    result = check_routes(file)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    elif result.ok:
        typer.echo(result.summary())
    else:
        for problem in result.problems:
            typer.echo(str(problem))
        typer.echo(result.summary(), err=True)
    if not result.ok:
        raise typer.Exit(1)


@app.command("diff")
def diff_command(
    old: Path = typer.Argument(..., help="The routing file as it is now."),
    new: Path = typer.Argument(..., help="The routing file as it would become."),
    as_json: bool = typer.Option(False, "--json", help="Print the changes as JSON."),
) -> None:
    """Show what would change from OLD to NEW, route by route (weights, matches, timeouts, shadow)."""
    changes = diff_files(old, new)
    if as_json:
        typer.echo(json.dumps({"old": str(old), "new": str(new), "changes": [c.as_dict() for c in changes]}, indent=2))
        return
    console = Console()
    if not changes:
        console.print(f"{old} and {new} route the same way: no changes.")
        return
    table = Table(title=f"{old} → {new}")
    table.add_column("scope")
    table.add_column("name", style="bold")
    table.add_column("change")
    table.add_column("details")
    colours = {"added": "green", "removed": "red", "moved": "yellow", "changed": "cyan"}
    for change in changes:
        table.add_row(
            change.scope, change.name, f"[{colours[change.kind]}]{change.kind}[/]", "\n".join(change.details)
        )
    console.print(table)


@app.command("shift")
def shift_command(
    file: Path = typer.Argument(..., help="The routing file to edit in place."),
    route: str = typer.Argument(..., help="The id of the route whose weights change."),
    to: list[str] = typer.Option(
        ..., "--to", help="NAME=PERCENT, repeatable; one upstream of the route left out takes the remainder."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the diff of the file; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Set a route's weights, keeping the file's comments and formatting; validated, written atomically."""
    result = shift_weights(file, route, _parse_to(to), dry_run=dry_run)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    if dry_run and result.diff:
        typer.echo(result.diff, nl=False)
    suffix = " (dry run, nothing written)" if dry_run and result.changed else ""
    typer.echo(result.describe() + suffix)


@app.command("schema")
def schema_command(
    output: str = typer.Option("routing.schema.json", "-o", "--output", help="Where to write it; '-' for stdout."),
) -> None:
    """Write the JSON Schema of routing.yaml (referenced from its first line, for editors)."""
    if output == "-":
        typer.echo(schema_text(), nl=False)
        return
    typer.echo(f"wrote {write_schema(output)}")
