"""`strangler routes check|diff|shift|schema|dry-run`: validate, compare, edit and try `routing.yaml`.

Thin over the façade's library: `facade.config` validates, `facade.diff` compares two files,
`facade.edit` shifts weights keeping comments and writes atomically, `facade.dryrun` replays
recorded traffic through an edit (with the shadow store's history read here, for its mismatch
prediction). `check_routes`, `dry_run_routes` and the schema writer are plain functions usable
from Python; the commands parse, call and print.
"""

from __future__ import annotations

import json
import os
import time
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
    "dry_run_routes",
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


# --------------------------------------------------------------------------------------------
# dry-run


def _health_get(url: str) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=2.0, verify=False).status_code
    except httpx.HTTPError as exc:
        raise ConnectionError(str(exc) or type(exc).__name__) from exc


def dry_run_routes(
    new: str | os.PathLike[str],
    traffic: str | os.PathLike[str],
    *,
    against: str | os.PathLike[str] = "routing.yaml",
    health: bool = True,
    health_path: str = "/healthz",
    shadow: bool = True,
    shadow_since: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Any:
    """Replay the recorded `traffic` through `against` and `new`; the `facade.dryrun.Report`.

    With `shadow`, the store `against` names (`shadow_store:`, a relative path from its directory,
    as the façade takes it) predicts the mismatches of the moving requests, from its comparisons
    since `shadow_since` (`24h`, an ISO time; None: all)."""
    from facade.dryrun import DryRunError, check_health, dry_run, read_traffic
    from facade.routing import RouteTable
    from facade.shadow import ReportError, parse_since

    try:
        since = parse_since(shadow_since, now=time.time())
    except ReportError:
        raise DryRunError(f"--shadow-since {shadow_since!r} is neither a duration nor a time; write e.g. 24h, 30m, 2d or 2024-05-01T12:00:00Z") from None
    before = RouteTable.build(load_config(against, env=env), "before")
    after = RouteTable.build(load_config(new, env=env), "after")
    report = dry_run(before, after, read_traffic(traffic), before_name=str(against), after_name=str(new))
    if health:
        used = {upstream for (_, upstream), count in report.shares_after.items() if count}
        report.unhealthy = {name: why for name, why in check_health(after, _health_get, path=health_path).items() if name in used}
    if shadow:
        _forecast(report, before, Path(against).resolve().parent, since)
    return report


def _forecast(report: Any, before: Any, base: Path, since: float | None) -> None:
    """Fill `report.shadow` from the store the table in force names; a missing or empty store is a note."""
    from facade.dryrun import DryRunError, forecast_mismatches, mirrored_routes
    from facade.shadow import ShadowStore, ShadowStoreError

    history: dict[str, list[dict[str, Any]]] = {}
    routes = mirrored_routes(report, before)
    named = f"the shadow store named by {report.before}"
    try:
        store = ShadowStore.from_config(before.config.shadow_store, base=base, read_only=True) if routes else None
    except ShadowStoreError as exc:
        # A reader opening a SQLite file that is not there: the façade never stored a comparison.
        if "there is no shadow store" not in str(exc):
            raise DryRunError(f"cannot open {named}: {exc}; fix its shadow_store:, or pass --no-shadow") from exc
        report.shadow_note = f"no shadow history: {named} does not exist yet"
        store = None
    if store is not None:
        try:
            if not store.routes():
                report.shadow_note = f"no shadow history: {named} holds no comparisons yet"
            else:
                history = {route: store.load(since=since, route=route).comparisons for route in routes}
        except ShadowStoreError as exc:
            raise DryRunError(f"cannot read {named}: {exc.__cause__ or exc}; fix its shadow_store:, or pass --no-shadow") from exc
        finally:
            store.close()
    report.shadow = forecast_mismatches(report, before, history)


def _render(report: Any, fmt: str) -> str:
    data = report.as_dict()
    if fmt == "json":
        return json.dumps(data, indent=2)
    md = fmt == "md"
    lines = [f"{'# ' if md else ''}Dry-run of {data['after']} against {data['before']}: {data['records']} records, {data['requests']:g} requests"]
    lines.append("")
    lines.append("| route | upstream | before | after |" if md else f"{'route':<24} {'upstream':<16} {'before':>8} {'after':>8}")
    if md:
        lines.append("|---|---|---:|---:|")
    before = {(s["route"], s["upstream"]): s["share"] for s in data["shares_before"]}
    after = {(s["route"], s["upstream"]): s["share"] for s in data["shares_after"]}
    for route, upstream in sorted(set(before) | set(after)):
        b, a = f"{before.get((route, upstream), 0):.2f}%", f"{after.get((route, upstream), 0):.2f}%"
        lines.append(f"| {route} | {upstream} | {b} | {a} |" if md else f"{route:<24} {upstream:<16} {b:>8} {a:>8}")
    lines.append("")
    bullet = "- " if md else ""
    lines.append(f"{bullet}users moving forward: {data['users_forward']}; moving back: {data['users_back']} ({data['moved_requests']:g} requests change upstream)")
    for item in data["rerouted"]:
        lines.append(f"{bullet}{item['requests']:g} requests fall from route {item['from']} to {item['to']}")
    if data["never_hit"]:
        lines.append(f"{bullet}routes never hit: {', '.join(data['never_hit'])}")
    for reason, count in data["unpredictable"].items():
        lines.append(f"{bullet}{count} records unpredictable: {reason}")
    for name, why in data["unhealthy"].items():
        lines.append(f"{bullet}upstream {name} is unhealthy: {why}")
    if report.shadow is not None:
        lines.extend(_render_shadow(report, md))
    return "\n".join(lines)


def _render_shadow(report: Any, md: bool) -> list[str]:
    """The mismatch prediction: per moving route, then its worst endpoints (text or Markdown)."""
    from facade.dryrun import LEAST_HISTORY, Forecast

    def cells(f: Forecast) -> tuple[str, str, str, str]:
        rate, predicted = f.rate, f.predicted
        return f"{f.moving:g}", str(f.compared), "—" if rate is None else f"{100 * rate:.2f}%", "—" if predicted is None else f"{predicted:.1f}"

    lines = ["", "## Predicted shadow mismatches" if md else "Predicted shadow mismatches (the shadow history of the new upstream, noise removed):"]
    if report.shadow_note:
        lines.append(("- " if md else "") + report.shadow_note)
    if not report.shadow:
        lines.append(("- " if md else "") + "no requests change upstream")
        return lines
    if md:
        lines += ["", "| route | move | moving | compared | mismatch rate | predicted |", "|---|---|---:|---:|---:|---:|"]
    else:
        lines.append(f"{'route / endpoint':<32} {'move':<24} {'moving':>8} {'compared':>9} {'rate':>8} {'predicted':>10}")
    notes = []
    for move in report.shadow:
        indent = "↳ " if md else "  "
        rows = [(move.route, f"{move.old} → {move.new}", move.total)] + [(indent + name, "", f) for name, f in move.worst()]
        for label, arrow, forecast in rows:
            moving, compared, rate, predicted = cells(forecast)
            thin = "" if forecast.enough or not forecast.compared else " *"
            if md:
                lines.append(f"| {label} | {arrow} | {moving} | {compared}{thin} | {rate} | {predicted} |")
            else:
                lines.append(f"{label:<32} {arrow:<24} {moving:>8} {compared + thin:>9} {rate:>8} {predicted:>10}")
        if move.note:
            notes.append(f"{move.route} ({move.old} → {move.new}): {move.note}")
    total = sum(m.total.predicted or 0.0 for m in report.shadow)
    lines.append("")
    bullet = "- " if md else ""
    lines.append(f"{bullet}predicted mismatching answers among the moving requests: {total:.1f}")
    lines += [f"{bullet}{note}" for note in notes]
    if any(not f.enough and f.compared for m in report.shadow for f in (m.total, *(f for _, f in m.worst()))):
        lines.append(f"{bullet}* fewer than {LEAST_HISTORY} comparisons: too little history to predict")
    return lines


@app.command("dry-run")
def dry_run_command(
    new: Path = typer.Argument(..., help="The routing file as it would become."),
    traffic: Path = typer.Option(..., "--traffic", help="JSON lines written by traffic_record."),
    against: Path = typer.Option(Path("routing.yaml"), "--against", help="The routing file in force."),
    fmt: str = typer.Option("text", "--format", help="text, json or md."),
    no_health: bool = typer.Option(False, "--no-health", help="Skip the upstreams' health checks."),
    health_path: str = typer.Option("/healthz", "--health-path", help="Path each upstream answers health checks on."),
    allow_back: bool = typer.Option(False, "--allow-back", help="Exit 0 although users move back."),
    allow_unhealthy: bool = typer.Option(False, "--allow-unhealthy", help="Exit 0 although an unhealthy upstream gets traffic."),
    no_shadow: bool = typer.Option(False, "--no-shadow", help="Skip the mismatch prediction from the shadow store."),
    shadow_since: str = typer.Option(None, "--shadow-since", help="Use the shadow history since then (24h, 30m, 2d or an ISO time); default all."),
) -> None:
    """What NEW does to recorded traffic, user by user, and the shadow mismatches its moving requests should see;
    exit 1 when users move back or traffic goes to an unhealthy upstream."""
    if fmt not in ("text", "json", "md"):
        raise typer.BadParameter(f"{fmt!r} is not a format; use text, json or md", param_hint="--format")
    report = dry_run_routes(
        new, traffic, against=against, health=not no_health, health_path=health_path, shadow=not no_shadow, shadow_since=shadow_since
    )
    typer.echo(_render(report, fmt))
    if (report.back and not allow_back) or (report.unhealthy and not allow_unhealthy):
        raise typer.Exit(1)
