"""Comparison rules: which paths to ignore, normalise, tolerate or compare unordered or by key.

`CompareRules` is what a route's `shadow.compare` says, validated and compiled once (path
patterns to regular expressions) into the `CompiledRules` the comparator reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from facade.shadow.exceptions import CompareError

__all__ = ["CompareRules", "CompiledRules", "Normalizer", "PathPattern", "rules_from"]

_SEGMENT = r"(?:\.[^.\[]+|\[[^\]]*\])"


class PathPattern:
    """A JSONPath-like selector: `$.a.b`, `$.results[*].price`, `$..updated_at`, `$.attrs.*`.

    A pattern selects the node it names and everything below it. Paths outside the body are
    named `status` and `headers.<name>`; they can be selected literally.
    """

    __slots__ = ("source", "_regex")

    def __init__(self, source: str) -> None:
        self.source = source
        self._regex = re.compile(self._translate(source))

    @staticmethod
    def _translate(source: str) -> str:
        text = source.strip()
        if not text.startswith("$"):
            return "^" + re.escape(text) + r"(?=$|[.\[])"
        out = ["^\\$"]
        i = 1
        while i < len(text):
            if text.startswith("..", i):
                out.append(_SEGMENT + "*")
                i += 1  # the next '.' starts the named segment
                continue
            ch = text[i]
            if ch == ".":
                j = i + 1
                while j < len(text) and text[j] not in ".[":
                    j += 1
                name = text[i + 1 : j]
                if not name:
                    raise CompareError(f"path pattern {source!r} has an empty segment at {i}; write names like $.a.b")
                out.append(r"\.[^.\[]+" if name == "*" else re.escape("." + name))
                i = j
            elif ch == "[":
                j = text.find("]", i)
                if j < 0:
                    raise CompareError(f"path pattern {source!r} has an unclosed '['; write $.items[*] or $.items[0]")
                inner = text[i + 1 : j]
                out.append(r"\[[^\]]*\]" if inner in ("*", "") else re.escape("[" + inner + "]"))
                i = j + 1
            else:
                raise CompareError(f"path pattern {source!r} has {ch!r} at {i}; segments start with '.' or '['")
        out.append(r"(?=$|[.\[])")
        return "".join(out)

    def matches(self, path: str) -> bool:
        return self._regex.match(path) is not None

    def __repr__(self) -> str:
        return f"PathPattern({self.source!r})"


@dataclass(frozen=True, slots=True)
class Normalizer:
    """Replace `pattern` by `replace` in strings (at `path`, or everywhere) before comparing."""

    pattern: str
    replace: str = ""
    path: str | None = None


@dataclass(frozen=True, slots=True)
class CompareRules:
    """Per-route comparison rules, compiled once."""

    headers: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    normalize: tuple[Normalizer, ...] = ()
    tolerance: float = 0.0
    unordered: tuple[str, ...] = ()
    array_keys: Mapping[str, str] = field(default_factory=dict)
    tolerances: Mapping[str, float] = field(default_factory=dict)  # path → tolerance there
    _compiled: CompiledRules = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", CompiledRules.build(self))


class CompiledRules:
    """`CompareRules` in the form the comparator reads: patterns compiled, headers lower-case."""

    __slots__ = ("headers", "ignore", "normalize", "tolerance", "tolerances", "unordered", "array_keys")

    def __init__(self) -> None:
        self.headers: tuple[str, ...] = ()
        self.ignore: tuple[PathPattern, ...] = ()
        self.normalize: tuple[tuple[re.Pattern[str], str, PathPattern | None], ...] = ()
        self.tolerance = 0.0
        self.tolerances: tuple[tuple[PathPattern, float], ...] = ()
        self.unordered: tuple[PathPattern, ...] = ()
        self.array_keys: tuple[tuple[PathPattern, str], ...] = ()

    @classmethod
    def build(cls, rules: CompareRules) -> CompiledRules:
        c = cls()
        c.headers = tuple(h.lower() for h in rules.headers)
        c.ignore = tuple(PathPattern(p) for p in rules.ignore)
        compiled = []
        for n in rules.normalize:
            try:
                regex = re.compile(n.pattern)
            except re.error as exc:
                raise CompareError(f"normalize pattern {n.pattern!r} is not a valid regular expression: {exc}") from exc
            compiled.append((regex, n.replace, PathPattern(n.path) if n.path else None))
        c.normalize = tuple(compiled)
        if rules.tolerance < 0 or math.isnan(rules.tolerance):
            raise CompareError(f"tolerance {rules.tolerance!r} must be a number >= 0")
        c.tolerance = float(rules.tolerance)
        for where, value in rules.tolerances.items():
            if value < 0 or math.isnan(value):
                raise CompareError(f"tolerance {value!r} at {where!r} must be a number >= 0")
        c.tolerances = tuple((PathPattern(p), float(v)) for p, v in rules.tolerances.items())
        c.unordered = tuple(PathPattern(p) for p in rules.unordered)
        c.array_keys = tuple((PathPattern(p), k) for p, k in rules.array_keys.items())
        return c


def rules_from(
    *,
    headers: Iterable[str] = (),
    ignore: Iterable[str] = (),
    normalize: Iterable[Normalizer | Mapping[str, Any] | Sequence[str]] = (),
    tolerance: float | Mapping[str, float] = 0.0,
    unordered: Iterable[str] = (),
    array_keys: Mapping[str, str] | None = None,
) -> CompareRules:
    """Build `CompareRules` from plain configuration values (mappings or pairs for normalizers)."""
    norms: list[Normalizer] = []
    for n in normalize:
        if isinstance(n, Normalizer):
            norms.append(n)
        elif isinstance(n, Mapping):
            pattern = n.get("regex", n.get("pattern"))
            norms.append(Normalizer(str(pattern), str(n.get("replace", "")), n.get("path")))
        else:
            items = list(n)
            norms.append(Normalizer(str(items[0]), str(items[1]) if len(items) > 1 else ""))
    return CompareRules(
        headers=tuple(headers),
        ignore=tuple(ignore),
        normalize=tuple(norms),
        tolerance=float(tolerance) if isinstance(tolerance, (int, float)) else 0.0,
        tolerances=dict(tolerance) if isinstance(tolerance, Mapping) else {},
        unordered=tuple(unordered),
        array_keys=dict(array_keys or {}),
    )
