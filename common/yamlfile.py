"""One way to load a YAML file: located parse, interpolation, model validation, `file:line:col`.

Every format the operator edits (`routing.yaml`, a sync spec, a cutover plan) goes through this
module. The file is read as UTF-8 and parsed with ruamel.yaml's round-trip loader, which keeps the
line and column of every key and value; `${VAR}` / `${VAR:-default}` are interpolated where the
format allows them; a pydantic model validates the plain data; each problem found, from the YAML
syntax to a model's validator, becomes a `Problem` pointing at the offending key or value.

A valid file takes a fast path: libyaml (PyYAML's C parser) reads it into plain data, which is
validated as above; only a file with a problem (or with a scalar whose meaning YAML 1.1 and 1.2
read differently) is parsed again with ruamel to place the problems. A façade reload of
`routing.yaml` takes about a tenth of the time so.

A format supplies only what is its own: its model, where it interpolates, its cross-reference
checks, the labels it gives locations ("route 'catalog-read'") and its hints for missing keys::

    config, problems = check_text(text, "routing.yaml", FacadeConfig, prepare=..., cross=..., label=...)
    plan = load_model(path, PlanModel, error=PlanError)     # raises PlanError(problems)
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml as pyyaml
from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

__all__ = [
    "FileError",
    "Found",
    "Loc",
    "Locator",
    "Problem",
    "check_model",
    "check_text",
    "interpolate",
    "load_model",
    "parse_yaml",
    "plain",
    "read_text",
    "validation_problems",
]

M = TypeVar("M", bound=BaseModel)
Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a configuration file, at a 1-based line and column."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "message": self.message}


class FileError(Exception):
    """A file is invalid; `problems` lists everything wrong with it. Each format subclasses it
    together with its package's base error (`ConfigError(FacadeError, FileError)`)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            text = f"{len(self.problems)} problems:\n" + "\n".join(str(problem) for problem in self.problems)
        super().__init__(text)

    def as_dict(self) -> dict[str, Any]:
        return {"error": str(self), "problems": [problem.as_dict() for problem in self.problems]}


@dataclass(frozen=True, slots=True)
class Found:
    """A problem at a location in the plain data, before it is given a line and column."""

    loc: Loc
    on_key: bool
    message: str


# --------------------------------------------------------------------------------------------
# Reading and parsing


def read_text(path: str | os.PathLike[str], *, error: type[FileError] = FileError) -> str:
    """The file's text; `error` with one problem at 1:1 naming the file when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error([Problem(str(path), 1, 1, f"cannot read the file: {exc.strerror or exc}.")]) from exc
    except UnicodeDecodeError as exc:
        raise error([Problem(str(path), 1, 1, f"the file is not UTF-8 text ({exc.reason}).")]) from exc


def parse_yaml(
    text: str,
    file: str,
    *,
    empty: str = "the file is empty; it must be a mapping.",
    not_mapping: str = "the file must be a mapping.",
    syntax_hint: Callable[[str], str | None] | None = None,
) -> tuple[Any, list[Problem]]:
    """The round-trip document of `text` (a mapping), or the one problem that stops parsing.

    `empty` and `not_mapping` are the messages for a file that is empty or not a mapping; they say
    what the format expects. `syntax_hint` may give a better fix for a syntax error than
    "fix the syntax here".
    """
    try:
        root = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = " ".join(part for part in (exc.context, exc.problem) if part)
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        fix = (syntax_hint(what) if syntax_hint else None) or "fix the syntax here"
        return None, [Problem(file, line, column, f"this is not valid YAML ({what}); {fix}.")]
    except YAMLError as exc:
        return None, [Problem(file, 1, 1, f"this is not valid YAML ({exc}); fix the syntax.")]
    if root is None:
        return None, [Problem(file, 1, 1, empty)]
    if not isinstance(root, dict):
        return None, [Problem(file, 1, 1, not_mapping)]
    return root, []


class _Unsure(Exception):
    """The fast path cannot be sure it reads the file as ruamel would: take the located path."""


_FastBase: Any = getattr(pyyaml, "CSafeLoader", pyyaml.SafeLoader)


class _FastLoader(_FastBase):  # type: ignore[misc, valid-type]
    """libyaml's parser with the YAML 1.2 core schema's plain scalars (as ruamel's round-trip
    loader reads them): `true`/`false`, `null`/`~`/empty, decimal integers and simple floats.
    Every other plain scalar that YAML 1.1 or 1.2 would read as something else than a string
    (yes/no/on/off, octal, hex, 1_000, 1:30, .inf, dates, `<<`, `=`) and every duplicate key
    raises `_Unsure`."""

    yaml_implicit_resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]] = {}

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=True) for key, _ in node.value]
        try:
            if len(set(keys)) != len(keys):
                raise _Unsure("duplicate key")
        except TypeError as exc:  # an unhashable key
            raise _Unsure("unhashable key") from exc
        return super().construct_mapping(node, deep=deep)


def _unsure(loader: Any, node: Any) -> Any:
    raise _Unsure(f"the scalar {node.value!r}")


_CORE = [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", r"^[-+]?(?:0|[1-9][0-9]*)$", "-+0123456789"),
    ("tag:yaml.org,2002:float", r"^[-+]?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$", "-+0123456789"),
    # Scalars YAML 1.1 (PyYAML) and 1.2 (ruamel) may read apart, or as something else than a string.
    ("!unsure", r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF|<<|=)$", "yYnNoO<="),
    ("!unsure", r"^[-+]?(?:[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?|0[0-9_]+|0[bBoOxX][0-9a-fA-F_]+|[0-9][0-9_]*_[0-9_]*"
                r"|[0-9][0-9_]*\.[0-9_.]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_.]*(?:[eE][-+]?[0-9]+)?"
                r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF|nan|NaN|NAN))$", "-+0123456789."),
    ("!unsure", r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}", "0123456789"),
]
for _tag, _pattern, _first in _CORE:
    _FastLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))
_FastLoader.add_constructor("!unsure", _unsure)


def _fast_data(text: str) -> Any:
    """The plain data of `text` read by libyaml, or None where only the located path can tell."""
    try:
        return pyyaml.load(text, Loader=_FastLoader)  # noqa: S506 (a safe loader)
    except (_Unsure, pyyaml.YAMLError, ValueError, TypeError):
        return None


class Locator:
    """Line and column (1-based) of keys and values in a ruamel round-trip document."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def find(self, loc: Loc, *, on_key: bool) -> tuple[int, int]:
        node = self.root
        line, column = 0, 0
        for depth, part in enumerate(loc):
            last = depth == len(loc) - 1
            if isinstance(node, CommentedMap) and part in node:
                try:
                    line, column = node.lc.key(part) if (on_key and last) else node.lc.value(part)
                except (AttributeError, KeyError, TypeError):
                    break
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                try:
                    line, column = node.lc.item(part)
                except (AttributeError, KeyError, TypeError, IndexError):
                    break
                node = node[part]
            else:
                break
        return line + 1, column + 1

    def problems(self, file: str, found: list[Found]) -> list[Problem]:
        """`found` placed in the file: deduplicated, in file order."""
        problems: list[Problem] = []
        for item in found:
            line, column = self.find(item.loc, on_key=item.on_key)
            problem = Problem(file, line, column, item.message)
            if problem not in problems:
                problems.append(problem)
        problems.sort(key=lambda problem: (problem.line, problem.column))
        return problems


def plain(node: Any) -> Any:
    """A round-trip document as plain dicts, lists and scalars (what the models validate)."""
    if isinstance(node, dict):
        return {plain(key): plain(value) for key, value in node.items()}
    if isinstance(node, list):
        return [plain(item) for item in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


# --------------------------------------------------------------------------------------------
# Interpolation

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str], *, strict: bool = True) -> str:
    """Replace `${VAR}` and `${VAR:-default}` (default when VAR is unset or empty) from `env`.

    An unset `${VAR}` without a default raises `ValueError` saying what to set; with
    `strict=False` it becomes the empty string (a sync spec's URL may come from a flag instead).
    """

    def replace(found: re.Match[str]) -> str:
        name, default = found.group(1), found.group(2)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        if not strict:
            return ""
        raise ValueError(f"{found.group(0)} is not set; set {name} or give a default: ${{{name}:-<value>}}")

    return _VARIABLE.sub(replace, text)


# --------------------------------------------------------------------------------------------
# Pydantic errors as house-style sentences

Label = Callable[[Loc, Mapping[str, Any]], tuple[str, Loc]]


def _no_label(loc: Loc, data: Mapping[str, Any]) -> tuple[str, Loc]:
    return "", loc


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(options) != 1:
                return annotation
            annotation = options[0]
        else:
            return annotation


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class whose field set applies at `loc` (for listing allowed keys)."""
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(part, str) or part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
            continue
        origin = typing.get_origin(current)
        args = typing.get_args(current)
        if origin in (list, tuple) and args:
            current = args[0]
        elif origin is dict and len(args) == 2:
            current = args[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _allowed(model: type[BaseModel] | None) -> list[str]:
    """The keys a user may write in `model`: fields filled from elsewhere (marked
    `json_schema_extra={"filled": True}`, like an upstream's name from its key) are not listed."""
    if model is None:
        return []
    return [
        name
        for name, info in model.model_fields.items()
        if not (isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("filled"))
    ]


def validation_problems(
    exc: ValidationError,
    data: Mapping[str, Any],
    model: type[BaseModel],
    *,
    label: Label = _no_label,
    hints: Mapping[str, str] | None = None,
) -> list[Found]:
    """Each pydantic error as a sentence at its location: missing keys with a hint, unknown keys
    with the closest allowed one, validator messages as they were written, type errors with the
    value given. `label(loc, data)` names where a location is ("route 'x'") and returns the rest."""
    hints = hints or {}
    found: list[Found] = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and part.startswith("function-")))
        kind = error["type"]
        where_label, rest = label(loc, data)
        where = f"{where_label}: " if where_label else ""
        field = _dotted(rest)
        message = str(error["msg"])
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if kind == "missing":
            name = str(loc[-1]) if loc else ""
            parent_label, parent_rest = label(loc[:-1], data)
            owner = " ".join(part for part in (parent_label, _dotted(parent_rest)) if part) or "the file"
            hint = hints.get(name)
            found.append(Found(loc[:-1], True, f"{owner} is missing {name!r}" + (f"; {hint}." if hint else ".")))
        elif kind == "extra_forbidden":
            key = str(loc[-1])
            allowed = _allowed(_model_at(model, loc[:-1]))
            close = difflib.get_close_matches(key, allowed, n=1)
            text = f"{where}unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            if allowed:
                text += f"; allowed here: {', '.join(allowed)}."
            found.append(Found(loc, True, text))
        elif kind in ("value_error", "assertion_error"):
            prefix = f"{field}: " if field and not message.startswith(field.rsplit(".", 1)[-1]) else ""
            found.append(Found(loc, False, f"{where}{prefix}{message}" + ("" if message.endswith(".") else ".")))
        else:
            on_key = loc[-1:] == ("[key]",)
            if on_key:
                loc, field = loc[:-1], _dotted(rest[:-1]) + " key"
            got = error.get("input")
            shown = f"; got {got!r}" if not isinstance(got, dict | list) else ""
            if message.startswith("Input should"):
                message = message[len("Input ") :]
            message = re.sub(r"a valid dictionary( or instance of \w+)?", "a mapping ({key: value, ...})", message)
            message = message.replace("a valid tuple", "a list ([a, b, ...])").replace("a valid list", "a list ([a, b, ...])")
            subject = f"{where_label}: {field}" if where_label and field else (field or where_label or "the file")
            found.append(Found(loc, on_key, f"{subject} {message[0].lower() + message[1:]}{shown}."))
    return found


# --------------------------------------------------------------------------------------------
# The whole load

Prepare = Callable[[dict[str, Any], Mapping[str, str]], list[Found]]
Cross = Callable[[Mapping[str, Any]], list[Found]]


def check_text(
    text: str,
    file: str,
    model: type[M],
    *,
    env: Mapping[str, str] | None = None,
    prepare: Prepare | None = None,
    cross: Cross | None = None,
    label: Label = _no_label,
    hints: Mapping[str, str] | None = None,
    empty: str = "the file is empty; it must be a mapping.",
    not_mapping: str = "the file must be a mapping.",
    syntax_hint: Callable[[str], str | None] | None = None,
    context: Mapping[str, Any] | None = None,
) -> tuple[M | None, list[Problem]]:
    """Parse and validate `text`: the model when it is valid, and every problem found, in file order.

    `prepare(data, env)` edits the plain data in place before validation (interpolation) and
    returns the problems it found; errors the model then reports beneath those locations are
    dropped (they follow from the first). `cross(data)` adds checks between parts of the file.
    `context` is passed to the model's validators.
    """
    data = _fast_data(text)
    if isinstance(data, dict) and data:
        found = prepare(data, os.environ if env is None else env) if prepare else []
        if not found:
            try:
                result = model.model_validate(data, context=dict(context) if context else None)
            except ValidationError:
                pass
            else:
                if not (cross and cross(data)):
                    return result, []
    root, problems = parse_yaml(text, file, empty=empty, not_mapping=not_mapping, syntax_hint=syntax_hint)
    if root is None:
        return None, problems
    data = plain(root)
    found = prepare(data, os.environ if env is None else env) if prepare else []
    prepared = [item.loc for item in found]
    result: M | None = None
    try:
        result = model.model_validate(data, context=dict(context) if context else None)
    except ValidationError as exc:
        found.extend(
            item
            for item in validation_problems(exc, data, model, label=label, hints=hints)
            if not any(item.loc[: len(loc)] == loc for loc in prepared)
        )
    if cross:
        found.extend(cross(data))
    problems = Locator(root).problems(file, found)
    return (result if not problems else None), problems


def check_model(
    path: str | os.PathLike[str], model: type[M], **options: Any
) -> tuple[M | None, list[Problem]]:
    """`check_text` on a file; an unreadable file is one problem naming it."""
    try:
        text = read_text(path)
    except FileError as exc:
        return None, exc.problems
    return check_text(text, str(path), model, **options)


def load_model(
    path: str | os.PathLike[str], model: type[M], *, error: type[FileError] = FileError, **options: Any
) -> M:
    """The validated model in a file, or `error` listing every problem (`file:line:col: message`)."""
    result, problems = check_model(path, model, **options)
    if problems or result is None:
        raise error(problems)
    return result
