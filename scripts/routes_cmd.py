"""`strangler routes check|diff|shift|schema`: validate, compare and edit `routing.yaml`.

The commands are thin wrappers over plain functions usable from Python: `check_routes`,
`diff_files` / `diff_configs`, `shift_weights`, `schema_text` / `write_schema`. `shift_weights`
edits the file as text at the positions ruamel.yaml reports for the weights, so every other byte
(comments, order, spacing, quoting) stays as the operator wrote it; the whole new file is
validated before it atomically replaces the old one.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from ruamel.yaml import YAML

from facade.config import ConfigError, FacadeConfig, Problem, check_file, check_text, json_schema, load_config
from facade.exceptions import FacadeError
from facade.units import format_duration, format_size

__all__ = [
    "Change",
    "CheckResult",
    "ShiftResult",
    "app",
    "check_routes",
    "diff_configs",
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
            f"{route.id} " + ", ".join(f"{name} {_pct(weight)}" for name, weight in route.to.items())
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
# diff


@dataclass(frozen=True)
class Change:
    """One changed thing between two routing files: a route, an upstream, the default or a setting."""

    scope: str  # "route" | "upstream" | "default" | "settings"
    name: str
    kind: str  # "added" | "removed" | "moved" | "changed"
    details: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "name": self.name, "kind": self.kind, "details": list(self.details)}


_DURATIONS = {"timeout", "connect_timeout", "reset_after", "retention", "cookie_max_age"}
_SIZES = {"replay_buffer", "max_body"}
_PERCENTS = {"sample", "noise_sample"}


def _pct(value: float) -> str:
    return f"{value:g}%"


def _show(key: str, value: Any) -> str:
    if value is None:
        return "(none)" if key != "timeout" else "(upstream's)"
    last = key.rsplit(".", 1)[-1]
    if last in _DURATIONS and isinstance(value, int | float):
        return format_duration(float(value))
    if last in _SIZES and isinstance(value, int):
        return format_size(value)
    if last in _PERCENTS and isinstance(value, int | float):
        return _pct(float(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}" if value else "{}"
    return str(value)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaves of a model dump; lists and condition maps are kept whole."""
    if isinstance(value, dict) and value and not prefix.endswith(("headers", "cookies", "query", "tolerance", "array_keys")):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _summary(key: str, value: Mapping[str, Any]) -> str:
    """A short description of a whole optional section (shadow, sticky, record) that appears or goes."""
    if key.endswith("shadow"):
        return f"to {value.get('to')}, sample {_pct(float(value.get('sample', 0)))}"
    if key.endswith("sticky"):
        return next((f"{name} {value[name]}" for name in ("cookie", "header") if value.get(name)), "client")
    return ", ".join(f"{name} {_show(name, item)}" for name, item in value.items() if not isinstance(item, dict))


def _field_changes(old: Any, new: Any, *, skip: Sequence[str] = ()) -> list[str]:
    sections = _sections(old, new)
    details = [
        f"{key} added: {_summary(key, after)}" if before is None else f"{key} removed (was {_summary(key, before)})"
        for key, (before, after) in sections.items()
    ]
    old, new = _without(old, sections), _without(new, sections)
    return details + _leaf_changes(old, new, skip=skip)


def _sections(old: Any, new: Any, prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """Optional nested sections present on one side only: {dotted key: (old, new)}."""
    found: dict[str, tuple[Any, Any]] = {}
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return found
    for key in dict.fromkeys([*old, *new]):
        before, after = old.get(key), new.get(key)
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if (before is None) != (after is None) and isinstance(before if before is not None else after, dict):
            found[dotted] = (before, after)
        elif isinstance(before, dict) and isinstance(after, dict):
            found.update(_sections(before, after, dotted))
    return found


def _without(value: Any, sections: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if dotted not in sections:
            out[key] = _without(item, sections, dotted)
    return out


def _leaf_changes(old: Any, new: Any, *, skip: Sequence[str] = ()) -> list[str]:
    before, after = _flatten(old), _flatten(new)
    details = []
    for key in dict.fromkeys([*before, *after]):
        if any(key == prefix or key.startswith(prefix + ".") for prefix in skip):
            continue
        if key not in before:
            details.append(f"{key} {_show(key, after[key])} (new)")
        elif key not in after:
            details.append(f"{key} {_show(key, before[key])} removed")
        elif before[key] != after[key]:
            details.append(f"{key} {_show(key, before[key])} → {_show(key, after[key])}")
    return details


def _weight_changes(old: Mapping[str, float], new: Mapping[str, float]) -> list[str]:
    details = []
    for name in dict.fromkeys([*old, *new]):
        if old.get(name) != new.get(name):
            before = _pct(old[name]) if name in old else "(none)"
            after = _pct(new[name]) if name in new else "(none)"
            details.append(f"{name} {before} → {after}")
    return details


def diff_configs(old: FacadeConfig, new: FacadeConfig) -> list[Change]:
    """What changes from `old` to `new`, route by route, then upstreams, the default and settings."""
    changes: list[Change] = []
    old_routes = {route.id: (index, route) for index, route in enumerate(old.routes)}
    new_routes = {route.id: (index, route) for index, route in enumerate(new.routes)}
    common_old = [route_id for route_id in old_routes if route_id in new_routes]
    common_new = [route_id for route_id in new_routes if route_id in old_routes]
    for route_id, (index, route) in new_routes.items():
        if route_id not in old_routes:
            changes.append(
                Change("route", route_id, "added", (f"at #{index + 1}: {route.match.path} → {_weights_text(route.to)}",))
            )
            continue
        old_index, old_route = old_routes[route_id]
        details: list[str] = []
        if common_old.index(route_id) != common_new.index(route_id):
            details.append(f"moved from #{old_index + 1} to #{index + 1}")
        details.extend(_weight_changes(old_route.to, route.to))
        details.extend(_field_changes(old_route.model_dump(), route.model_dump(), skip=("to", "id")))
        if details:
            kind = "moved" if details[0].startswith("moved") and len(details) == 1 else "changed"
            changes.append(Change("route", route_id, kind, tuple(details)))
    for route_id, (index, route) in old_routes.items():
        if route_id not in new_routes:
            changes.append(Change("route", route_id, "removed", (f"was #{index + 1}: {route.match.path}",)))
    default = _field_changes(old.default.model_dump(), new.default.model_dump())
    if default:
        changes.append(Change("default", "default", "changed", tuple(default)))
    for name in dict.fromkeys([*old.upstreams, *new.upstreams]):
        if name not in old.upstreams:
            changes.append(Change("upstream", name, "added", (new.upstreams[name].url,)))
        elif name not in new.upstreams:
            changes.append(Change("upstream", name, "removed", (old.upstreams[name].url,)))
        else:
            details = _field_changes(old.upstreams[name].model_dump(), new.upstreams[name].model_dump())
            if details:
                changes.append(Change("upstream", name, "changed", tuple(details)))
    old_dump, new_dump = old.model_dump(), new.model_dump()
    for section in ("version", "admin", "assignment", "breaker", "shadow_store"):
        details = _field_changes({section: old_dump[section]}, {section: new_dump[section]})
        if details:
            changes.append(Change("settings", section, "changed", tuple(details)))
    return changes


def _weights_text(weights: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {_pct(weight)}" for name, weight in weights.items())


def diff_files(
    old: str | os.PathLike[str], new: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> list[Change]:
    """Validate both files and diff them; `ConfigError` when either is invalid."""
    return diff_configs(load_config(old, env=env), load_config(new, env=env))


# --------------------------------------------------------------------------------------------
# shift


@dataclass(frozen=True)
class ShiftResult:
    """What `shift_weights` did (or, with dry_run, would do)."""

    path: Path
    route_id: str
    old: dict[str, float]
    new: dict[str, float]
    diff: str
    written: bool
    text: str = field(repr=False, default="")

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def describe(self) -> str:
        """`catalog-read: monolith 100% → 75%, catalog 0% → 25%`."""
        details = _weight_changes(self.old, self.new)
        return f"{self.route_id}: " + (", ".join(details) if details else f"unchanged ({_weights_text(self.new)})")

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "route": self.route_id,
            "old": self.old,
            "new": self.new,
            "changed": self.changed,
            "written": self.written,
            "diff": self.diff,
        }


_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def resolve_weights(route_id: str, current: Mapping[str, float], given: Mapping[str, float]) -> dict[str, float]:
    """The route's new weights: `given`, plus the remainder to the one upstream not given.

    Upstreams of the route not given keep nothing when the given weights already add up to 100.
    """
    for name, value in given.items():
        if not 0 <= value <= 100:
            raise FacadeError(f"--to {name}={_number_text(value)}: weights are percentages from 0 to 100")
    total = sum(given.values())
    rest = [name for name in current if name not in given]
    new = {name: float(given.get(name, 0.0)) for name in current}
    new.update({name: float(value) for name, value in given.items()})
    if round(total * 100) != 10000:
        if not rest:
            raise FacadeError(
                f"the weights given for route {route_id!r} add up to {total:g}%, not 100; "
                f"give them all so they add up to 100 (e.g. --to {next(iter(given))}=...)"
            )
        if len(rest) > 1:
            raise FacadeError(
                f"route {route_id!r} also sends to {', '.join(rest)}; give their weights too "
                f"(--to {rest[0]}=..., so that everything adds up to 100)"
            )
        remainder = round(100 - total, 2)
        if remainder < 0:
            raise FacadeError(
                f"the weights given for route {route_id!r} add up to {total:g}%, which leaves nothing "
                f"for {rest[0]}; they must add up to at most 100"
            )
        new[rest[0]] = remainder
    return new


def shift_weights(
    path: str | os.PathLike[str],
    route_id: str,
    weights: Mapping[str, float],
    *,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
) -> ShiftResult:
    """Set a route's weights in a routing file, keeping every other byte of it.

    `weights` may name only some of the route's upstreams when exactly one other remains: it takes
    the remainder (`{"catalog": 25}` on `{monolith: 100, catalog: 0}` gives monolith 75). The
    whole new file is validated before it atomically replaces the old one (nothing is written with
    `dry_run`). Raises `ConfigError` if the result would be invalid, `FacadeError` for a bad request.
    """
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except OSError as exc:
        raise FacadeError(f"cannot read {target}: {exc.strerror or exc}") from exc
    root = YAML(typ="rt").load(text)
    route, ids = _find_route(root, route_id)
    if route is None:
        raise FacadeError(
            f"route {route_id!r} is not in {target}; routes: {', '.join(ids) or '(none)'}"
        )
    node = route.get("to")
    if isinstance(node, str):
        current = {str(node): 100.0}
    elif isinstance(node, dict):
        current = {str(name): float(value) for name, value in node.items() if isinstance(value, int | float)}
    else:
        raise FacadeError(f"route {route_id!r} in {target} has no weights under `to:` to shift")
    new = resolve_weights(route_id, current, weights)
    new_text = _edit_weights(text, route, new) if new != current else text
    config, problems = check_text(new_text, str(target), env=env)
    if problems:
        raise ConfigError(problems)
    assert config is not None
    written_route = next(item for item in config.routes if item.id == route_id)
    if dict(written_route.to) != new:
        raise FacadeError(
            f"editing {target} would give route {route_id!r} {_weights_text(written_route.to)} instead of "
            f"{_weights_text(new)}; edit the file by hand"
        )
    diff = "".join(
        difflib.unified_diff(
            text.splitlines(keepends=True), new_text.splitlines(keepends=True), f"{target} (before)", f"{target} (after)"
        )
    )
    written = False
    if not dry_run and new_text != text:
        _write_atomically(target, new_text)
        written = True
    return ShiftResult(target, route_id, current, new, diff, written, new_text)


def _find_route(root: Any, route_id: str) -> tuple[Any, list[str]]:
    routes = root.get("routes") if isinstance(root, dict) else None
    ids: list[str] = []
    for route in routes if isinstance(routes, list) else []:
        if isinstance(route, dict):
            ids.append(str(route.get("id")))
            if route.get("id") == route_id:
                return route, ids
    return None, ids


def _offsets(text: str) -> list[int]:
    starts = [0]
    for index, char in enumerate(text):
        if char == "\n":
            starts.append(index + 1)
    return starts


def _edit_weights(text: str, route: Any, new: Mapping[str, float]) -> str:
    """Rewrite the weights under the route's `to:` in `text` at ruamel's reported positions."""
    starts = _offsets(text)
    node = route["to"]
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    if isinstance(node, str):
        line, column = route.lc.value("to")
        start = starts[line] + column
        token = re.match(r"""'[^']*'|"[^"]*"|[^\s#,}\]]+""", text[start:])
        if token is None or token.group(0).strip("'\"") != node:
            raise FacadeError("could not locate the `to:` value to rewrite; edit the file by hand")
        mapping = ", ".join(f"{name}: {_number_text(value)}" for name, value in new.items())
        edits.append((start, start + len(token.group(0)), "{" + mapping + "}"))
    else:
        for name, value in new.items():
            if name in node:
                line, column = node.lc.value(name)
                start = starts[line] + column
                token = _NUMBER.match(text, start)
                if token is None:
                    raise FacadeError(f"the weight of {name!r} is not a plain number in the file; edit it by hand")
                if float(token.group(0)) != value:
                    edits.append((start, token.end(), _number_text(value)))
        missing = [name for name in new if name not in node]
        if missing:
            edits.append(_insertion(text, starts, node, {name: new[name] for name in missing}))
    return _apply_edits(text, starts, edits)


def _apply_edits(text: str, starts: list[int], edits: list[tuple[int, int, str]]) -> str:
    """Apply (start, end, replacement) edits; a line whose length changes keeps its aligned comment's column."""
    by_line: dict[int, list[tuple[int, int, str]]] = {}
    whole: list[tuple[int, int, str]] = []
    for edit in edits:
        if "\n" in edit[2]:
            whole.append(edit)
        else:
            by_line.setdefault(_line_of(starts, edit[0]), []).append(edit)
    for line, items in by_line.items():
        begin = starts[line]
        end = text.find("\n", begin)
        end = len(text) if end == -1 else end
        original = new = text[begin:end]
        for start, stop, replacement in sorted(items, reverse=True):
            new = new[: start - begin] + replacement + new[stop - begin :]
        whole.append((begin, end, _keep_comment_column(original, new)))
    for start, stop, replacement in sorted(whole, reverse=True):
        text = text[:start] + replacement + text[stop:]
    return text


def _keep_comment_column(original: str, new: str) -> str:
    delta = len(new) - len(original)
    before = re.search(r"( {2,})(#.*)$", original)
    after = re.search(r"( {2,})(#.*)$", new)
    if not delta or before is None or after is None or before.group(2) != after.group(2):
        return new
    spaces = len(before.group(1))
    # Keep the comment's column while at least two spaces remain before it.
    return new[: after.start(1)] + " " * max(2, spaces - delta) + after.group(2)


def _line_of(starts: list[int], offset: int) -> int:
    low, high = 0, len(starts) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if starts[middle] <= offset:
            low = middle
        else:
            high = middle - 1
    return low


def _insertion(text: str, starts: list[int], node: Any, added: Mapping[str, float]) -> tuple[int, int, str]:
    """Where and what to insert for upstreams new to a `to:` mapping (flow or block style)."""
    last = list(node)[-1]
    line, column = node.lc.value(last)
    token = _NUMBER.match(text, starts[line] + column)
    if token is None:
        raise FacadeError(f"the weight of {last!r} is not a plain number in the file; edit it by hand")
    if node.fa.flow_style():
        items = "".join(f", {name}: {_number_text(value)}" for name, value in added.items())
        return token.end(), token.end(), items
    key_line, key_column = node.lc.key(last)
    end_of_line = starts[line + 1] if line + 1 < len(starts) else len(text)
    prefix = "" if text[end_of_line - 1 : end_of_line] == "\n" else "\n"
    items = "".join(f"{' ' * key_column}{name}: {_number_text(value)}\n" for name, value in added.items())
    return end_of_line, end_of_line, prefix + items


def _write_atomically(target: Path, text: str) -> None:
    """Write next to the target, fsync, then rename over it: readers see the old or the new file."""
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# schema


def schema_text() -> str:
    """The JSON Schema of routing.yaml, as committed in routing.schema.json."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: str | os.PathLike[str]) -> Path:
    """Write the JSON Schema to `path` (atomically); returns the path."""
    target = Path(path)
    _write_atomically(target, schema_text())
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
