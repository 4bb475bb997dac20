"""The sync spec: which legacy tables feed which service tables, and how rows translate.

A spec is a YAML file beside the extracted service (e.g. `extracted/catalog/sync.yaml`)::

    version: 1
    name: catalog                      # slot, publication and origin: strangler_catalog
    source: {url: "${STRANGLER_MONOLITH_DATABASE_URL:-}", topic_prefix: legacy}
    target: {url: "${STRANGLER_CATALOG_DATABASE_URL:-}"}
    on_error: dead_letter              # or stop
    batch_size: 1000
    tables:
      - source: public.catalog_product
        target: catalog.products
        key: [id]
        columns:                       # legacy column: service column, or {to, transform, scale}
          id: id
          name: title
          price: {to: price_cents, transform: cents}
        filter: {sku: {not_startswith: "TEST-"}}   # every condition must hold
        transform: "extracted.catalog.sync_transforms:product"   # row -> row | None
        owned_by_service: [title, price_cents, description]   # after the write switch

`ownership: enforced` (default `off`) puts `owned_by_service` in force: the forward applier then
writes only the legacy-owned columns of updates and records a legacy change to a service-owned
column as a conflict (`cdc.conflicts`). The cutover's write switch turns it on through
`SyncSpec.with_ownership`, or for a running applier by source position (`cdc.ownership`).

`direction: reverse` (default `forward`) marks the reverse stream of the write cutover: its source
is the service's store and its target the legacy database (`extracted/catalog/reverse.yaml`).
There `owned_by_service` names the SOURCE (service) columns, in the same vocabulary as the
forward spec, and ownership is always enforced: updates write only those columns. `snapshot:
never` (default `initial`) starts the stream at the slot's creation without copying the tables
first (the legacy side has the rows already; copying could overwrite newer legacy values).

It loads once into immutable models; every problem is reported as `file:line:col: message`.
Reading, parsing, positions and `${VAR:-default}` interpolation are the shared loader's
(`common.yamlfile`), as for `routing.yaml` and the cutover plan; the checks here are the spec's own.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cdc.exceptions import CDCError
from common.yamlfile import FileError, Problem, interpolate, parse_yaml, read_text

__all__ = [
    "BUILTIN_TRANSFORMS",
    "ColumnSpec",
    "FILTER_OPS",
    "FilterSpec",
    "Problem",
    "SpecError",
    "SyncSpec",
    "TableSpec",
    "load_spec",
    "parse_spec",
]

BUILTIN_TRANSFORMS = frozenset({"cents", "from_cents", "lower", "strip", "json"})
FILTER_OPS = frozenset({"eq", "ne", "in", "not_in", "startswith", "not_startswith", "is_null", "gt", "gte", "lt", "lte"})
ON_ERROR = ("dead_letter", "stop")
OWNERSHIP = ("off", "enforced")
DIRECTIONS = ("forward", "reverse")
SNAPSHOTS = ("initial", "never")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SpecError(CDCError, FileError):
    """The sync spec is invalid; `.problems` lists every problem found."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnSpec:
    """One legacy column and the service column it becomes."""

    source: str
    target: str
    transform: str | None = None
    # Scale of a numeric arriving as Debezium precise-mode bytes without a schema; with
    # `from_cents`, the decimal places of the number written (2: cents to units).
    scale: int | None = None
    function: Callable[[Any], Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterSpec:
    """A condition on a legacy column; a row that fails any is not in the service table."""

    column: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class TableSpec:
    """A legacy table and the service table it feeds."""

    source_schema: str
    source_table: str
    target_schema: str
    target_table: str
    key: tuple[str, ...]
    columns: tuple[ColumnSpec, ...]
    filters: tuple[FilterSpec, ...] = ()
    transform: str | None = None
    function: Callable[[dict[str, Any]], dict[str, Any] | None] | None = field(default=None, compare=False, repr=False)
    # Service columns the service writes after the write switch (in force with `ownership: enforced`);
    # in a reverse spec these are source columns (the source is the service's store).
    owned_by_service: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return f"{self.source_schema}.{self.source_table}"

    @property
    def target(self) -> str:
        return f"{self.target_schema}.{self.target_table}"

    @property
    def target_key(self) -> tuple[str, ...]:
        by_source = {c.source: c.target for c in self.columns}
        return tuple(by_source[k] for k in self.key)

    @property
    def target_columns(self) -> tuple[str, ...]:
        return tuple(c.target for c in self.columns)

    @property
    def source_columns(self) -> tuple[str, ...]:
        return tuple(c.source for c in self.columns)

    @property
    def legacy_owned_targets(self) -> tuple[str, ...]:
        """Reverse spec: the target (legacy) columns fed by mapped source columns the service does not own."""
        return tuple(c.target for c in self.columns if c.source not in self.owned_by_service and c.source not in self.key)


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncSpec:
    """A whole sync spec: the service's name, where to read and write, and its tables."""

    name: str
    source_url: str | None
    target_url: str | None
    topic_prefix: str
    on_error: str
    batch_size: int
    tables: tuple[TableSpec, ...]
    path: str = "<string>"
    ownership: str = "off"
    direction: str = "forward"
    snapshot: str = "initial"

    @property
    def ownership_enforced(self) -> bool:
        return self.ownership == "enforced"

    @property
    def reverse(self) -> bool:
        return self.direction == "reverse"

    @property
    def slot_name(self) -> str:
        return f"strangler_{self.name}"

    @property
    def publication_name(self) -> str:
        return f"strangler_{self.name}"

    @property
    def origin_name(self) -> str:
        return f"strangler_{self.name}"

    def table_for(self, schema: str, table: str) -> TableSpec | None:
        for t in self.tables:
            if t.source_schema == schema and t.source_table == table:
                return t
        return None

    def topics(self) -> list[str]:
        return [f"{self.topic_prefix}.{t.source}" for t in self.tables]

    def with_urls(self, *, source_url: str | None = None, target_url: str | None = None) -> SyncSpec:
        from dataclasses import replace

        return replace(self, source_url=source_url or self.source_url, target_url=target_url or self.target_url)


    def with_ownership(self, ownership: str, owned_by_service: Mapping[str, Sequence[str]] | None = None) -> SyncSpec:
        """This spec with ownership switched (and, given, each table's service-owned columns replaced).

        `owned_by_service` maps a service (or legacy) table to its service-owned service columns,
        as the cutover plan's `writes.ownership` names them; raises `SpecError` on a bad name."""
        chk = _Checker(self.path)
        if ownership not in OWNERSHIP:
            chk.node(None, f"ownership {ownership!r} is not known; use enforced or off")
        elif self.reverse and ownership != "enforced":
            chk.node(None, "a reverse spec always enforces ownership; stop its `cdc run` instead of turning it off")
        tables = list(self.tables)
        # A table is named by its service table or its legacy table (as the cutover plan may).
        by_target = {**{t.source: i for i, t in enumerate(tables)}, **{t.target: i for i, t in enumerate(tables)}}
        for target, columns in (owned_by_service or {}).items():
            if target not in by_target:
                chk.node(None, f"ownership names service table {target!r}, which the spec does not feed; "
                         f"known: {', '.join(sorted(by_target))}")
                continue
            table = tables[by_target[target]]
            owned = _owned_columns(list(columns), table, chk, f"ownership of {target}", None, reverse=self.reverse)
            tables[by_target[target]] = replace(table, owned_by_service=owned)
        if chk.problems:
            raise SpecError(chk.problems)
        return replace(self, ownership=ownership, tables=tuple(tables))


def _owned_columns(
    node: Any, table: TableSpec, chk: _Checker, where: str, parent: Any, *, reverse: bool = False
) -> tuple[str, ...]:
    """Validated service-owned columns of a table: mapped service columns, never key columns.

    The service's columns are the target's in a forward spec and the source's in a reverse one."""
    if not isinstance(node, list):
        chk.at(parent, "owned_by_service", f"{where}: 'owned_by_service' must list service columns, "
               f"e.g. [title, price_cents], got {node!r}", value=True)
        return ()
    out: list[str] = []
    service_columns, service_key = (table.source_columns, table.key) if reverse else (table.target_columns, table.target_key)
    for name in node:
        if name not in service_columns:
            chk.node(node, f"{where}: owned_by_service names {name!r}, which is not a mapped service column; "
                     f"mapped: {', '.join(service_columns)}")
        elif name in service_key:
            chk.node(node, f"{where}: owned_by_service names key column {name!r}; the key belongs to both sides, "
                     "remove it")
        elif name not in out:
            out.append(str(name))
    return tuple(out)


def _resolve_callable(ref: str) -> Callable[..., Any]:
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    fn = getattr(module, attr)
    if not callable(fn):
        raise TypeError(f"{ref} is not callable")
    return fn  # type: ignore[no-any-return]


class _Checker:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def at(self, node: Any, key: Any, message: str, *, value: bool = False) -> None:
        line, col = 0, 0
        lc = getattr(node, "lc", None)
        if lc is not None:
            try:
                pos = lc.value(key) if value else lc.key(key)
                line, col = pos[0] + 1, pos[1] + 1
            except (KeyError, IndexError, TypeError):
                line, col = lc.line + 1, lc.col + 1
        self.problems.append(Problem(self.file, line, col, message))

    def node(self, node: Any, message: str) -> None:
        lc = getattr(node, "lc", None)
        line, col = (lc.line + 1, lc.col + 1) if lc is not None else (1, 1)
        self.problems.append(Problem(self.file, line, col, message))


def _qualified(text: Any) -> tuple[str, str] | None:
    if not isinstance(text, str):
        return None
    parts = text.split(".")
    if len(parts) == 1:
        parts = ["public", parts[0]]
    if len(parts) != 2 or not all(_IDENT.match(p) for p in parts):
        return None
    return parts[0], parts[1]


def _url(section: Any, key: str, chk: _Checker, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    if section is None:
        return None, None
    if not isinstance(section, Mapping):
        chk.node(section, f"'{key}' must be a mapping like {{url: \"${{STRANGLER_MONOLITH_DATABASE_URL}}\"}}")
        return None, None
    known = {"url", "url_env", "topic_prefix"}
    for k in section:
        if k not in known:
            chk.at(section, k, f"unknown field '{k}' in '{key}'; known: {', '.join(sorted(known))}")
    url = section.get("url")
    if url is None and section.get("url_env"):
        url = env.get(str(section["url_env"]))
    if url is not None:
        url = interpolate(str(url), env, strict=False) or None
    prefix = section.get("topic_prefix")
    return url, (str(prefix) if prefix is not None else None)


def _columns(node: Any, chk: _Checker, where: str) -> list[ColumnSpec]:
    out: list[ColumnSpec] = []
    if not isinstance(node, Mapping) or not node:
        chk.node(node, f"{where}: 'columns' must map each legacy column to a service column, e.g. {{name: title}}")
        return out
    targets: dict[str, str] = {}
    for src, value in node.items():
        if not isinstance(src, str) or not _IDENT.match(src):
            chk.at(node, src, f"{where}: legacy column {src!r} is not a plain column name")
            continue
        transform = None
        scale = None
        fn = None
        if isinstance(value, str):
            target = value
        elif isinstance(value, Mapping):
            unknown = [k for k in value if k not in ("to", "transform", "scale")]
            for k in unknown:
                chk.at(value, k, f"{where}: unknown field '{k}' for column '{src}'; known: to, transform, scale")
            target = value.get("to", src)
            transform = value.get("transform")
            scale = value.get("scale")
            if transform is not None:
                if not isinstance(transform, str):
                    chk.at(value, "transform", f"{where}: transform of '{src}' must be a string", value=True)
                    transform = None
                elif ":" in transform:
                    try:
                        fn = _resolve_callable(transform)
                    except Exception as exc:  # noqa: BLE001 - any import failure is a spec problem
                        chk.at(value, "transform", f"{where}: transform {transform!r} of '{src}' cannot be imported ({exc}); "
                               "give 'module:function' importable from the project", value=True)
                elif transform not in BUILTIN_TRANSFORMS:
                    chk.at(value, "transform", f"{where}: unknown transform {transform!r} for '{src}'; built-in: "
                           f"{', '.join(sorted(BUILTIN_TRANSFORMS))}, or 'module:function'", value=True)
            if scale is not None and (not isinstance(scale, int) or isinstance(scale, bool) or scale < 0):
                chk.at(value, "scale", f"{where}: scale of '{src}' must be a non-negative integer, got {scale!r}", value=True)
                scale = None
        elif value is None:
            target = src
        else:
            chk.at(node, src, f"{where}: column '{src}' maps to {value!r}; give a column name or {{to: ..., transform: ...}}", value=True)
            continue
        if not isinstance(target, str) or not _IDENT.match(target):
            chk.at(node, src, f"{where}: service column {target!r} for '{src}' is not a plain column name", value=True)
            continue
        if target in targets:
            chk.at(node, src, f"{where}: service column '{target}' is fed by both '{targets[target]}' and '{src}'; map each once")
            continue
        targets[target] = src
        out.append(ColumnSpec(source=src, target=target, transform=transform, scale=scale, function=fn))
    return out


def _filters(node: Any, chk: _Checker, where: str, columns: set[str]) -> list[FilterSpec]:
    out: list[FilterSpec] = []
    if node is None:
        return out
    if not isinstance(node, Mapping):
        chk.node(node, f"{where}: 'filter' must map legacy columns to conditions, e.g. {{sku: {{not_startswith: \"TEST-\"}}}}")
        return out
    for column, cond in node.items():
        if column not in columns:
            chk.at(node, column, f"{where}: filter on '{column}', which is not a mapped column; map it or filter on one of: "
                   f"{', '.join(sorted(columns))}")
            continue
        if not isinstance(cond, Mapping):
            cond = {"eq": cond}
        for op, value in cond.items():
            if op not in FILTER_OPS:
                chk.at(cond, op, f"{where}: unknown filter '{op}' on '{column}'; known: {', '.join(sorted(FILTER_OPS))}")
                continue
            if op in ("in", "not_in") and not isinstance(value, list):
                chk.at(cond, op, f"{where}: '{op}' on '{column}' needs a list, got {value!r}", value=True)
                continue
            if op in ("startswith", "not_startswith") and not isinstance(value, str):
                chk.at(cond, op, f"{where}: '{op}' on '{column}' needs a string, got {value!r}", value=True)
                continue
            plain = list(value) if isinstance(value, list) else value
            out.append(FilterSpec(column=column, op=op, value=plain))
    return out


def _table(node: Any, index: int, chk: _Checker, reverse: bool = False) -> TableSpec | None:
    where = f"tables[{index}]"
    if not isinstance(node, Mapping):
        chk.node(node, f"{where} must be a mapping with source, target, key, columns")
        return None
    known = {"source", "target", "key", "columns", "filter", "transform", "owned_by_service"}
    for k in node:
        if k not in known:
            chk.at(node, k, f"{where}: unknown field '{k}'; known: {', '.join(sorted(known))}")
    ok = True
    src = _qualified(node.get("source"))
    if src is None:
        chk.at(node, "source" if "source" in node else next(iter(node), None), f"{where}: 'source' must be a legacy table like "
               f"public.catalog_product, got {node.get('source')!r}", value="source" in node)
        ok = False
    dst = _qualified(node.get("target"))
    if dst is None:
        chk.at(node, "target" if "target" in node else next(iter(node), None), f"{where}: 'target' must be a service table like "
               f"catalog.products, got {node.get('target')!r}", value="target" in node)
        ok = False
    where = f"{where} ({node.get('source')})" if src else where
    columns = _columns(node.get("columns"), chk, where) if "columns" in node else []
    if "columns" not in node:
        chk.node(node, f"{where}: 'columns' is required: map each legacy column you need to a service column")
        ok = False
    mapped = {c.source for c in columns}
    key = node.get("key", ["id"])
    if isinstance(key, str):
        key = [key]
    if not isinstance(key, list) or not key:
        chk.at(node, "key", f"{where}: 'key' must be a list of legacy primary-key columns, got {key!r}", value=True)
        ok = False
        key = []
    for k in key:
        if k not in mapped:
            chk.at(node, "key" if "key" in node else "columns", f"{where}: key column '{k}' is not mapped; add it under "
                   "'columns' (the service table needs the key)", value="key" in node)
            ok = False
    filters = _filters(node.get("filter"), chk, where, mapped)
    transform = node.get("transform")
    fn = None
    if transform is not None:
        if not isinstance(transform, str) or ":" not in transform:
            chk.at(node, "transform", f"{where}: row transform must be 'module:function', got {transform!r}", value=True)
        else:
            try:
                fn = _resolve_callable(transform)
            except Exception as exc:  # noqa: BLE001
                chk.at(node, "transform", f"{where}: row transform {transform!r} cannot be imported ({exc}); give "
                       "'module:function' importable from the project", value=True)
    if not ok or src is None or dst is None:
        return None
    table = TableSpec(
        source_schema=src[0], source_table=src[1], target_schema=dst[0], target_table=dst[1],
        key=tuple(str(k) for k in key), columns=tuple(columns), filters=tuple(filters),
        transform=transform, function=fn,
    )
    if "owned_by_service" in node:
        table = replace(table, owned_by_service=_owned_columns(node["owned_by_service"], table, chk, where, node,
                                                               reverse=reverse))
    elif reverse:
        chk.node(node, f"{where}: a reverse table needs 'owned_by_service': the source (service) columns the "
                 "service owns, which its updates write into the legacy table, e.g. [title, price_cents]")
    return table


def parse_spec(text: str, *, file: str = "<string>", env: Mapping[str, str] | None = None) -> SyncSpec:
    """Validate a spec's YAML text into a `SyncSpec`; raise `SpecError` listing every problem."""
    env = os.environ if env is None else env
    chk = _Checker(file)
    doc, problems = parse_yaml(
        text,
        file,
        empty="the sync spec is empty; it is a mapping with name, source, target and tables.",
        not_mapping="a sync spec is a mapping with name, source, target and tables",
    )
    if problems:
        raise SpecError(problems)
    known = {"version", "name", "source", "target", "on_error", "batch_size", "tables", "ownership", "direction",
             "snapshot"}
    for k in doc:
        if k not in known:
            chk.at(doc, k, f"unknown field '{k}'; known: {', '.join(sorted(known))}")
    if doc.get("version", 1) != 1:
        chk.at(doc, "version", f"version {doc.get('version')!r} is not supported; use version: 1", value=True)
    name = doc.get("name")
    if not isinstance(name, str) or not _IDENT.match(name):
        chk.at(doc, "name" if "name" in doc else next(iter(doc), None),
               f"'name' must be the service's name (letters, digits, _), got {name!r}", value="name" in doc)
    source_url, prefix = _url(doc.get("source"), "source", chk, env)
    target_url, _ = _url(doc.get("target"), "target", chk, env)
    on_error = doc.get("on_error", "dead_letter")
    if on_error not in ON_ERROR:
        chk.at(doc, "on_error", f"on_error {on_error!r} is not known; use dead_letter or stop", value=True)
    direction = doc.get("direction", "forward")
    if direction not in DIRECTIONS:
        chk.at(doc, "direction", f"direction {direction!r} is not known; use forward (legacy -> service) or reverse "
               "(service -> legacy, after the write switch)", value=True)
        direction = "forward"
    reverse = direction == "reverse"
    snapshot = doc.get("snapshot", "initial")
    if snapshot not in SNAPSHOTS:
        chk.at(doc, "snapshot", f"snapshot {snapshot!r} is not known; use initial (copy the tables first) or never "
               "(stream from the slot's creation)", value=True)
        snapshot = "initial"
    if reverse and "snapshot" in doc and snapshot != "never":
        chk.at(doc, "snapshot", "a reverse spec must not copy the service's rows over the legacy ones (they may be "
               "older); use snapshot: never", value=True)
    ownership = doc.get("ownership", "enforced" if reverse else "off")
    if ownership is False:  # YAML 1.1 reads a bare `off` as false
        ownership = "off"
    if ownership not in OWNERSHIP:
        chk.at(doc, "ownership", f"ownership {ownership!r} is not known; use enforced (after the write switch) or off",
               value=True)
        ownership = "off"
    if reverse and ownership != "enforced":
        chk.at(doc, "ownership", "a reverse spec always enforces ownership (its updates write only the service's "
               "columns); remove 'ownership'", value=True)
        ownership = "enforced"
    batch_size = doc.get("batch_size", 1000)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        chk.at(doc, "batch_size", f"batch_size must be a positive integer, got {batch_size!r}", value=True)
        batch_size = 1000
    tables_node = doc.get("tables")
    tables: list[TableSpec] = []
    if not isinstance(tables_node, list) or not tables_node:
        chk.at(doc, "tables" if "tables" in doc else next(iter(doc), None),
               "'tables' must list at least one {source, target, key, columns} entry", value="tables" in doc)
    else:
        seen: dict[str, int] = {}
        for i, node in enumerate(tables_node):
            table = _table(node, i, chk, reverse)
            if table is None:
                continue
            if table.source in seen:
                chk.node(node, f"tables[{i}]: legacy table {table.source} is already mapped by tables[{seen[table.source]}]; "
                         "map each legacy table once")
                continue
            seen[table.source] = i
            tables.append(table)
    if chk.problems:
        raise SpecError(chk.problems)
    return SyncSpec(
        name=str(name), source_url=source_url, target_url=target_url,
        topic_prefix=prefix or "legacy", on_error=str(on_error), batch_size=int(batch_size),
        tables=tuple(tables), path=file, ownership=str(ownership), direction=str(direction),
        snapshot="never" if reverse else str(snapshot),
    )


def load_spec(path: str | Path, *, env: Mapping[str, str] | None = None) -> SyncSpec:
    """Read and validate a spec file."""
    return parse_spec(read_text(path, error=SpecError), file=str(path), env=env)
