"""What changes between two routing files, route by route: `diff_configs` and `diff_files`.

Pure over two validated `FacadeConfig`s: routes added, removed, moved or changed (weights,
matches, timeouts, shadow, sticky keys), then upstreams, the default route and the settings.
Each `Change` describes itself in words the operator reads (`catalog 0% → 25%`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from facade.config import FacadeConfig, load_config
from facade.units import format_duration, format_size

__all__ = ["Change", "diff_configs", "diff_files", "weight_changes", "weights_text"]


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


def weight_changes(old: Mapping[str, float], new: Mapping[str, float]) -> list[str]:
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
                Change("route", route_id, "added", (f"at #{index + 1}: {route.match.path} → {weights_text(route.to)}",))
            )
            continue
        old_index, old_route = old_routes[route_id]
        details: list[str] = []
        if common_old.index(route_id) != common_new.index(route_id):
            details.append(f"moved from #{old_index + 1} to #{index + 1}")
        details.extend(weight_changes(old_route.to, route.to))
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


def weights_text(weights: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {_pct(weight)}" for name, weight in weights.items())


def diff_files(
    old: str | os.PathLike[str], new: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> list[Change]:
    """Validate both files and diff them; `ConfigError` when either is invalid."""
    return diff_configs(load_config(old, env=env), load_config(new, env=env))
