"""Editing `routing.yaml` in place: the weight shift, keeping every other byte of the file.

`shift_weights` edits the file as text at the positions ruamel.yaml reports for the weights, so
every other byte (comments, order, spacing, quoting) stays as the operator wrote it; the whole new
file is validated before `write_atomically` replaces the old one (write beside it, fsync, rename),
so a reloading façade reads either the old or the new file, never half of one.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from facade.config import ConfigError, check_file, check_text
from facade.diff import weight_changes, weights_text
from facade.exceptions import FacadeError

__all__ = ["RouteEdit", "ShiftResult", "resolve_weights", "collapse_route", "set_shadow_sample", "shift_text", "shift_weights", "write_atomically"]


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
        details = weight_changes(self.old, self.new)
        return f"{self.route_id}: " + (", ".join(details) if details else f"unchanged ({weights_text(self.new)})")

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
    problems = check_file(target, env=env)
    if problems:
        # The same file:line:col problems `routes check` prints (syntax, duplicate keys, encoding):
        # an edit starts from a valid file.
        raise ConfigError(problems)
    text = target.read_text(encoding="utf-8")
    current, new, new_text = shift_text(text, target, route_id, weights, env=env)
    diff = "".join(
        difflib.unified_diff(
            text.splitlines(keepends=True), new_text.splitlines(keepends=True), f"{target} (before)", f"{target} (after)"
        )
    )
    written = False
    if not dry_run and new_text != text:
        write_atomically(target, new_text)
        written = True
    return ShiftResult(target, route_id, current, new, diff, written, new_text)


def shift_text(
    text: str, target: Path, route_id: str, weights: Mapping[str, float], *, env: Mapping[str, str] | None = None
) -> tuple[dict[str, float], dict[str, float], str]:
    """`shift_weights` on a file's text: (current weights, new weights, the new text, validated).

    For edits that change more than the weights in one write (`facade.hold_edit.clear_hold` with
    `weights=`, the write switch's switch-and-release)."""
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
    _check_names(target, route_id, current, weights, root)
    new = resolve_weights(route_id, current, weights)
    new_text = _edit_weights(text, route, new) if new != current else text
    config, problems = check_text(new_text, str(target), env=env)
    if problems:
        raise ConfigError(problems)
    assert config is not None
    written_route = next(item for item in config.routes if item.id == route_id)
    if dict(written_route.to) != new:
        raise FacadeError(
            f"editing {target} would give route {route_id!r} {weights_text(written_route.to)} instead of "
            f"{weights_text(new)}; edit the file by hand"
        )
    return current, new, new_text


def collapse_route(
    path: str | os.PathLike[str], route_id: str, upstream: str, *, dry_run: bool = False, env: Mapping[str, str] | None = None
) -> ShiftResult:
    """Replace a route's weights (all of them on `upstream`) by `to: upstream`: the migration's last
    routing edit (`strangler cutover finish`). Only a one-line `{...}` mapping is rewritten."""
    target = Path(path)
    problems = check_file(target, env=env)
    if problems:
        raise ConfigError(problems)
    text = target.read_text(encoding="utf-8")
    root = YAML(typ="rt").load(text)
    route, ids = _find_route(root, route_id)
    if route is None:
        raise FacadeError(f"route {route_id!r} is not in {target}; routes: {', '.join(ids) or '(none)'}")
    node = route.get("to")
    if isinstance(node, str):
        if node != upstream:
            raise FacadeError(f"route {route_id!r} in {target} goes to {node!r}, not {upstream!r}")
        return ShiftResult(target, route_id, {node: 100.0}, {node: 100.0}, "", False, text)
    current = {str(name): float(value) for name, value in node.items()}
    if current.get(upstream, 0.0) < 100.0:
        raise FacadeError(f"route {route_id!r} in {target} sends {weights_text(current)}; move it all to {upstream} first")
    starts = _offsets(text)
    line, column = route.lc.value("to")
    start = starts[line] + column
    end = text.find("}", start) + 1
    if text[start : start + 1] != "{" or end <= 0 or "\n" in text[start:end]:
        raise FacadeError(f"the weights of route {route_id!r} are not a one-line {{...}} mapping; write `to: {upstream}` by hand")
    new_text = text[:start] + upstream + text[end:]
    config, problems = check_text(new_text, str(target), env=env)
    if problems:
        raise ConfigError(problems)
    diff = "".join(difflib.unified_diff(text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                        f"{target} (before)", f"{target} (after)"))
    if not dry_run:
        write_atomically(target, new_text)
    return ShiftResult(target, route_id, current, {upstream: 100.0}, diff, not dry_run, new_text)


@dataclass(frozen=True)
class RouteEdit:
    """What `set_shadow_sample` did (or, with dry_run, would do): one field of one route."""

    path: Path
    route_id: str
    field: str
    old: float | None
    new: float
    diff: str
    written: bool
    text: str = field(repr=False, default="")

    def describe(self) -> str:
        before = "absent" if self.old is None else f"{self.old:g}%"
        return f"{self.route_id}: {self.field} {before} → {self.new:g}%"


def set_shadow_sample(
    path: str | os.PathLike[str],
    route_id: str,
    candidate: str,
    sample: float,
    *,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
) -> RouteEdit:
    """Set `shadow.sample` of a route (adding `shadow: {to: candidate, sample: N}` when it has none),
    keeping every other byte of the file; validated, then written atomically (not with `dry_run`)."""
    target = Path(path)
    problems = check_file(target, env=env)
    if problems:
        raise ConfigError(problems)
    if not 0 <= sample <= 100:
        raise FacadeError(f"shadow sample {sample:g} is not a percentage from 0 to 100")
    text = target.read_text(encoding="utf-8")
    root = YAML(typ="rt").load(text)
    route, ids = _find_route(root, route_id)
    if route is None:
        raise FacadeError(f"route {route_id!r} is not in {target}; routes: {', '.join(ids) or '(none)'}")
    starts = _offsets(text)
    shadow = route.get("shadow")
    old: float | None = None
    if isinstance(shadow, dict):
        if shadow.get("to") != candidate:
            raise FacadeError(
                f"route {route_id!r} in {target} shadows to {shadow.get('to')!r}, not {candidate!r}; edit its shadow: by hand"
            )
        if "sample" in shadow:
            old = float(shadow["sample"])
            line, column = shadow.lc.value("sample")
            token = _NUMBER.match(text, starts[line] + column)
            if token is None:
                raise FacadeError(f"the shadow sample of route {route_id!r} is not a plain number in the file; edit it by hand")
            edits = [(token.start(), token.end(), _number_text(sample))]
        else:
            old = 100.0  # the model's default
            edits = [_insertion(text, starts, shadow, {"sample": sample})]
    elif shadow is None:
        line, column = route.lc.key("to")
        if route.fa.flow_style() or text[starts[line] : starts[line] + column].strip() not in ("",):
            raise FacadeError(f"route {route_id!r} in {target} is not in block style; add its shadow: by hand")
        entry = f"{' ' * column}shadow: {{to: {candidate}, sample: {_number_text(sample)}}}\n"
        edits = [(starts[line], starts[line], entry)]
    else:
        raise FacadeError(f"route {route_id!r} in {target} has a shadow: that is not a mapping; edit it by hand")
    new_text = _apply_edits(text, starts, edits) if old != sample else text
    config, problems = check_text(new_text, str(target), env=env)
    if problems:
        raise ConfigError(problems)
    assert config is not None
    written_route = next(item for item in config.routes if item.id == route_id)
    if written_route.shadow is None or written_route.shadow.sample != sample:
        raise FacadeError(f"editing {target} would not give route {route_id!r} shadow sample {sample:g}; edit the file by hand")
    diff = "".join(
        difflib.unified_diff(
            text.splitlines(keepends=True), new_text.splitlines(keepends=True), f"{target} (before)", f"{target} (after)"
        )
    )
    written = not dry_run and new_text != text
    if written:
        write_atomically(target, new_text)
    return RouteEdit(target, route_id, "shadow.sample", old, float(sample), diff, written, new_text)


def _check_names(
    target: Path, route_id: str, current: Mapping[str, float], given: Mapping[str, float], root: Any
) -> None:
    """A name given that is neither on the route nor a declared upstream is a typo: say so."""
    upstreams = root.get("upstreams") if isinstance(root, dict) else None
    declared = [str(name) for name in upstreams] if isinstance(upstreams, dict) else []
    for name in given:
        if name in current or name in declared:
            continue
        close = difflib.get_close_matches(name, [*current, *declared], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise FacadeError(
            f"{name!r} is not an upstream of route {route_id!r} in {target} (it sends to "
            f"{', '.join(current)}; declared upstreams: {', '.join(declared) or '(none)'}); {hint}"
            f"use --to NAME=PERCENT with one of those"
        )


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


def write_atomically(target: Path, text: str) -> None:
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
