"""Placing and clearing a write hold in `routing.yaml`, keeping every other byte of the file.

`set_hold` writes `hold: {id: "...", until: <unix time>, budget: 2s}` on each named route (as a
flow mapping on its own line after the route's `id:`, or after the id inside a flow-style route);
called again with the same id it renews the lease. `clear_hold` removes that setting from every
route carrying the hold's id. Like `facade.edit.shift_weights` (and with its helpers) the new file
is validated whole before it atomically replaces the old one, so each worker's reload picks the
hold up, or drops it, in one step. A weight shift and a `clear_hold` after it release the held
requests to the new upstream.

`prepare_switch` does the work of both edits before anything is held: it computes and validates
the file with the hold and the file that clears it and shifts the weights; `place()` and
`switch()` then only check that the file is still the one each was computed from and replace it,
so what the write switch does inside its pause is a compare and a write, not parsing and
validating the file twice.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from facade.config import ConfigError, FacadeConfig, check_file, check_text
from facade.edit import _find_route, _offsets, shift_text, write_atomically
from facade.exceptions import FacadeError
from facade.units import format_duration

__all__ = ["HoldEdit", "PreparedSwitch", "clear_hold", "prepare_switch", "set_hold"]

_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|[^\s#,}\]]+""")


@dataclass(frozen=True)
class HoldEdit:
    """What `set_hold` or `clear_hold` did (or, with dry_run, would do)."""

    path: Path
    hold_id: str
    routes: tuple[str, ...]
    until: float | None
    budget: float | None
    diff: str
    written: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "hold": self.hold_id,
            "routes": list(self.routes),
            "until": self.until,
            "budget": self.budget,
            "written": self.written,
            "diff": self.diff,
        }


def set_hold(
    path: str | os.PathLike[str],
    routes: Sequence[str],
    hold_id: str,
    *,
    lease: float,
    budget: float = 2.0,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> HoldEdit:
    """Hold `routes` under `hold_id` until `lease` seconds from now, each request at most `budget`.

    Renews the lease where a route already carries this hold. Raises `FacadeError` for an unknown
    route, a route held by another hold or a lease or budget that is not positive, `ConfigError`
    if the file (before or after) is invalid.
    """
    _check_hold(routes, lease, budget)
    target, text, root = _load(path, env)
    until = round(clock() + lease, 3)
    new_text = _hold_text(target, text, root, routes, hold_id, until, budget)
    diff, written = _finish(target, text, new_text, _placed(routes, hold_id, until), dry_run, env, f"place hold {hold_id!r}")
    return HoldEdit(target, hold_id, tuple(dict.fromkeys(routes)), until, budget, diff, written)


def _check_hold(routes: Sequence[str], lease: float, budget: float) -> None:
    if not routes:
        raise FacadeError("a hold needs at least one route; name the write routes, e.g. catalog-write")
    if lease <= 0 or budget <= 0:
        raise FacadeError(f"a hold needs a positive lease and budget (got lease {lease:g}s, budget {budget:g}s); e.g. lease 30s, budget 2s")


def _hold_text(target: Path, text: str, root: Any, routes: Sequence[str], hold_id: str, until: float, budget: float) -> str:
    value = "{" + f"id: {json.dumps(hold_id)}, until: {until!r}, budget: {format_duration(budget)}" + "}"
    edits: list[tuple[int, int, str]] = []
    starts = _offsets(text)
    for route_id in dict.fromkeys(routes):
        route, ids = _find_route(root, route_id)
        if route is None:
            raise FacadeError(f"route {route_id!r} is not in {target}; routes: {', '.join(ids) or '(none)'}")
        current = route.get("hold")
        if current is not None:
            if not isinstance(current, dict) or current.get("id") != hold_id:
                other = current.get("id") if isinstance(current, dict) else current
                raise FacadeError(
                    f"route {route_id!r} in {target} is already held by hold {other!r}; clear that hold first "
                    f"(or renew it under its own id)"
                )
            start, end = _hold_value_span(text, starts, route, route_id)
            edits.append((start, end, value))
        elif route.fa.flow_style():
            line, column = route.lc.value("id")
            token = _TOKEN.match(text, starts[line] + column)
            if token is None:
                raise FacadeError(f"could not locate the id of route {route_id!r} in {target}; add the hold by hand")
            edits.append((token.end(), token.end(), f", hold: {value}"))
        else:
            line, column = route.lc.key("id")
            at = starts[line + 1] if line + 1 < len(starts) else len(text)
            prefix = "" if text[at - 1 : at] == "\n" else "\n"
            edits.append((at, at, f"{prefix}{' ' * column}hold: {value}\n"))
    return _splice(text, edits)


def _placed(routes: Sequence[str], hold_id: str, until: float) -> Callable[[FacadeConfig], bool]:
    def placed(config: FacadeConfig) -> bool:
        held = {route.id for route in config.routes if route.hold is not None and route.hold.id == hold_id and route.hold.until == until}
        return held == set(routes)

    return placed


def clear_hold(
    path: str | os.PathLike[str],
    hold_id: str,
    *,
    weights: Mapping[str, Mapping[str, float]] | None = None,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
) -> HoldEdit:
    """Remove hold `hold_id` from every route carrying it; nothing to do when none does.

    `weights` (route id → weights, as `shift_weights` takes them) shifts those routes in the same
    write: every worker then goes from held to released-on-the-new-weights in one reload, so no
    replica sends a held request to the old upstream, whatever order the replicas reload in."""
    target, text, root = _load(path, env)
    new_text, cleared = _clear_text(target, text, root, hold_id, weights, env)
    diff, written = _finish(target, text, new_text, _gone(hold_id), dry_run, env, f"clear hold {hold_id!r}")
    return HoldEdit(target, hold_id, tuple(cleared), None, None, diff, written)


def _clear_text(
    target: Path, text: str, root: Any, hold_id: str, weights: Mapping[str, Mapping[str, float]] | None,
    env: Mapping[str, str] | None,
) -> tuple[str, list[str]]:
    for route_id, new in (weights or {}).items():
        _, _, text = shift_text(text, target, route_id, new, env=env)
    if weights:
        root = YAML(typ="rt").load(text)
    starts = _offsets(text)
    edits: list[tuple[int, int, str]] = []
    cleared: list[str] = []
    for route in root.get("routes") or []:
        hold = route.get("hold") if isinstance(route, dict) else None
        if not isinstance(hold, dict) or hold.get("id") != hold_id:
            continue
        route_id = str(route.get("id"))
        cleared.append(route_id)
        start, end = _hold_value_span(text, starts, route, route_id)
        key_line, key_column = route.lc.key("hold")
        key_start = starts[key_line] + key_column
        if route.fa.flow_style():
            before = text.rfind(",", 0, key_start)
            if before == -1 or text[before + 1 : key_start].strip():
                raise FacadeError(f"route {route_id!r} in {target}: move `hold:` after `id:` or remove it by hand")
            edits.append((before, end, ""))
            continue
        line_end = starts[key_line + 1] if key_line + 1 < len(starts) else len(text)
        rest = text[end:line_end].strip()
        if text[starts[key_line] : key_start].strip() or (rest and not rest.startswith("#")):
            raise FacadeError(f"route {route_id!r} in {target}: `hold:` does not stand on a line of its own; remove it by hand")
        edits.append((starts[key_line], line_end, ""))
    return _splice(text, edits), cleared


def _gone(hold_id: str) -> Callable[[FacadeConfig], bool]:
    def gone(config: FacadeConfig) -> bool:
        return not any(route.hold is not None and route.hold.id == hold_id for route in config.routes)

    return gone


@dataclass(frozen=True)
class PreparedSwitch:
    """A hold and the switch that releases it, both computed and validated ahead (`prepare_switch`)."""

    path: Path
    before: str
    """The file both were computed from."""
    held: str
    """`before` with the hold on the routes."""
    switched: str
    """`held` with the hold cleared and the weights shifted."""
    placing: HoldEdit
    """What `place()` writes (its diff; `written` is False until then)."""

    def place(self) -> HoldEdit:
        """Write the file with the hold, if the file is still `before`."""
        self._replace(self.before, self.held, "place the hold")
        return HoldEdit(self.path, self.placing.hold_id, self.placing.routes, self.placing.until, self.placing.budget,
                        self.placing.diff, True)

    def switch(self) -> None:
        """Write the file without the hold and with the new weights, if the file is still `held`."""
        self._replace(self.held, self.switched, "switch")

    def rehearse(self) -> None:
        """What `switch()` costs, without touching the file: read and compare it, and write the
        switched text to a temporary file beside it (then removed)."""
        current = self.path.read_text(encoding="utf-8")
        if current != self.before:
            raise FacadeError(f"{self.path} changed while the switch was prepared; prepare it again")
        probe = self.path.with_name(f".{self.path.name}.probe")
        try:
            write_atomically(probe, self.switched)
        finally:
            probe.unlink(missing_ok=True)

    def _replace(self, expected: str, new_text: str, what: str) -> None:
        try:
            current = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FacadeError(f"cannot read {self.path} to {what}: {exc}") from exc
        if current != expected:
            raise FacadeError(f"{self.path} was changed by someone else since the switch was prepared; not writing it to {what}")
        write_atomically(self.path, new_text)


def prepare_switch(
    path: str | os.PathLike[str],
    routes: Sequence[str],
    hold_id: str,
    *,
    lease: float,
    budget: float,
    weights: Mapping[str, Mapping[str, float]],
    env: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> PreparedSwitch:
    """The file holding `routes` under `hold_id` (lease from now) and the file that then clears
    the hold and sets `weights`, each validated as `set_hold` and `clear_hold` validate theirs;
    nothing is written. Raises as those do."""
    _check_hold(routes, lease, budget)
    target, text, root = _load(path, env)
    until = round(clock() + lease, 3)
    held = _hold_text(target, text, root, routes, hold_id, until, budget)
    placing_diff, _ = _finish(target, text, held, _placed(routes, hold_id, until), True, env, f"place hold {hold_id!r}")
    switched, _ = _clear_text(target, held, YAML(typ="rt").load(held), hold_id, weights, env)
    _finish(target, held, switched, _gone(hold_id), True, env, f"clear hold {hold_id!r}")
    placing = HoldEdit(target, hold_id, tuple(dict.fromkeys(routes)), until, budget, placing_diff, False)
    return PreparedSwitch(target, text, held, switched, placing)


def _load(path: str | os.PathLike[str], env: Mapping[str, str] | None) -> tuple[Path, str, Any]:
    target = Path(path)
    problems = check_file(target, env=env)
    if problems:
        raise ConfigError(problems)  # an edit starts from a valid file
    text = target.read_text(encoding="utf-8")
    return target, text, YAML(typ="rt").load(text)


def _hold_value_span(text: str, starts: list[int], route: Any, route_id: str) -> tuple[int, int]:
    """Where the route's `hold:` flow mapping `{...}` starts and ends in `text`."""
    line, column = route.lc.value("hold")
    start = starts[line] + column
    if text[start : start + 1] != "{":
        raise FacadeError(f"route {route_id!r}: write its hold on one line as hold: {{id: ..., until: ..., budget: ...}} or edit it by hand")
    depth, index, quote = 0, start, ""
    while index < len(text):
        char = text[index]
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return start, index + 1
        index += 1
    raise FacadeError(f"route {route_id!r}: its hold mapping is not closed; edit it by hand")


def _splice(text: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _finish(
    target: Path, text: str, new_text: str, check: Callable[[FacadeConfig], bool], dry_run: bool,
    env: Mapping[str, str] | None, what: str,
) -> tuple[str, bool]:
    """Validate the edited file, check it says what was meant, write it: (diff, written)."""
    config, problems = check_text(new_text, str(target), env=env)
    if problems:
        raise ConfigError(problems)
    assert config is not None
    if not check(config):
        raise FacadeError(f"editing {target} to {what} would not give the file that hold; edit the file by hand")
    diff = "".join(
        difflib.unified_diff(
            text.splitlines(keepends=True), new_text.splitlines(keepends=True), f"{target} (before)", f"{target} (after)"
        )
    )
    if dry_run or new_text == text:
        return diff, False
    write_atomically(target, new_text)
    return diff, True
