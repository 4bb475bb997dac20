"""Row mapping: a legacy row through a table's spec into a service row. Pure, no I/O.

`RowMapper(table).map(row)` renames columns, applies transforms and filters, and returns the
service row, or None when the row is filtered out (it does not belong in the service table).
`cdc.events.UNAVAILABLE` passes through untransformed: the applier leaves that column alone.
A value that cannot be translated raises `MappingError` (the event is dead-lettered); a mapped
column missing from a full row raises `SchemaChangedError` (the legacy column was dropped).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from cdc.debezium import DebeziumFormatError, decode_decimal_bytes, decode_variable_scale
from cdc.events import UNAVAILABLE
from cdc.exceptions import MappingError, SchemaChangedError
from cdc.spec import ColumnSpec, FilterSpec, TableSpec
from cdc.textrow import RowLayout, TextRow, portable_time

__all__ = ["RowMapper", "to_decimal", "transform_value"]

Transform = Callable[[Any], Any]


def to_decimal(value: Any, scale: int | None = None) -> Decimal:
    """A legacy numeric in any of the encodings it may arrive in, as a Decimal.

    Decimal/int (pgoutput), float (Debezium `double` mode), numeric string (`string` mode), a
    base64 unscaled integer (Debezium `precise` mode without a schema) read with `scale`, or
    `{"scale": s, "value": base64}` (Debezium's VariableScaleDecimal without a schema).
    """
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise MappingError(f"{value!r} is a boolean, not a number")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            return Decimal(value)
        except InvalidOperation:
            if scale is None:
                raise MappingError(
                    f"{value!r} is not a number; if it is a Debezium precise-mode decimal sent without a schema, "
                    "give the column's scale in the spec ({to: ..., transform: cents, scale: 2})"
                ) from None
            try:
                return decode_decimal_bytes(value, scale)
            except DebeziumFormatError:
                raise MappingError(f"{value!r} is neither a number nor a base64 precise-mode decimal") from None
    if isinstance(value, Mapping) and set(value) == {"scale", "value"}:
        try:
            return decode_variable_scale(value)
        except DebeziumFormatError as exc:
            raise MappingError(str(exc)) from None
    raise MappingError(f"{value!r} ({type(value).__name__}) is not a number")


def _cents(scale: int | None) -> Transform:
    def cents(value: Any) -> int:
        amount = to_decimal(value, scale)
        if not amount.is_finite():
            raise MappingError(f"price {value!r} is not finite; cannot express it in cents")
        scaled = amount * 100
        if scaled != scaled.to_integral_value():
            raise MappingError(f"{value!r} has fractions of a cent; cents needs at most 2 decimal places")
        return int(scaled)

    return cents


def _from_cents(scale: int | None) -> Transform:
    """Integer cents (or another minor unit: `scale` decimal places, default 2) as an exact Decimal."""
    places = 2 if scale is None else scale

    def from_cents(value: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
            raise MappingError(f"from_cents needs an integer amount, got {value!r}")
        try:
            amount = Decimal(value)
        except InvalidOperation:
            raise MappingError(f"from_cents needs an integer amount, got {value!r}") from None
        if amount != amount.to_integral_value():
            raise MappingError(f"{value!r} is not a whole number of cents")
        return amount.scaleb(-places)

    return from_cents


def _lower(value: Any) -> str:
    if not isinstance(value, str):
        raise MappingError(f"lower needs text, got {value!r}")
    return value.lower()


def _strip(value: Any) -> str:
    if not isinstance(value, str):
        raise MappingError(f"strip needs text, got {value!r}")
    return value.strip()


def _json(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return value
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise MappingError(f"{value[:80]!r} is not JSON") from None
    return value


def transform_value(column: ColumnSpec) -> Transform | None:
    """The function a column's values go through (None: copied as they are)."""
    if column.function is not None:
        return column.function
    if column.transform == "cents":
        return _cents(column.scale)
    if column.transform == "from_cents":
        return _from_cents(column.scale)
    if column.transform == "lower":
        return _lower
    if column.transform == "strip":
        return _strip
    if column.transform == "json":
        return _json
    if column.scale is not None:
        scale = column.scale
        return lambda v: to_decimal(v, scale)
    return None


def _predicate(f: FilterSpec) -> Callable[[Any], bool]:
    v = f.value
    if f.op == "eq":
        return lambda x: x == v
    if f.op == "ne":
        return lambda x: x != v
    if f.op == "in":
        return lambda x: x in v
    if f.op == "not_in":
        return lambda x: x not in v
    if f.op == "startswith":
        return lambda x: isinstance(x, str) and x.startswith(v)
    if f.op == "not_startswith":
        return lambda x: not (isinstance(x, str) and x.startswith(v))
    if f.op == "is_null":
        return (lambda x: x is None) if v else (lambda x: x is not None)
    if f.op == "gt":
        return lambda x: x is not None and x > v
    if f.op == "gte":
        return lambda x: x is not None and x >= v
    if f.op == "lt":
        return lambda x: x is not None and x < v
    return lambda x: x is not None and x <= v


class RowMapper:
    """Translates rows of one legacy table into rows of its service table."""

    def __init__(self, table: TableSpec) -> None:
        self.table = table
        self._plan: list[tuple[str, str, Transform | None, bool]] = [
            (c.source, c.target, transform_value(c), c.transform == "json" and c.function is None) for c in table.columns
        ]
        self._filters = [(f.column, _predicate(f), f) for f in table.filters]
        self._key_plan = [(k, t) for k, t in zip(table.key, table.target_key, strict=True)]
        self._key_fns = {c.source: transform_value(c) for c in table.columns if c.source in table.key}
        self._text_plans: dict[RowLayout, list[tuple[str, str, int, Transform | None, bool]]] = {}

    def accepts(self, row: Mapping[str, Any]) -> bool:
        """Whether the legacy row passes the spec's filters."""
        for column, pred, spec in self._filters:
            value = row.get(column)
            if value is UNAVAILABLE:
                continue  # filters on a TOASTed column cannot be decided from this event
            try:
                if not pred(value):
                    return False
            except TypeError as exc:
                raise MappingError(f"filter {spec.op} {spec.value!r} cannot compare {value!r} in '{column}'") from exc
        return True

    def map(self, row: Mapping[str, Any], *, raw_text: bool = False) -> dict[str, Any] | None:
        """The service row for a full legacy row, or None when filtered out.

        `raw_text`: when `row` is a `TextRow` (our capture) and the table has no row transform,
        columns copied unchanged (and `json` columns from a json/jsonb column) keep the server's
        text output, which is valid input for the same column type: the applier writes it as it
        is instead of converting it to Python and back (times with a zone offset only when in UTC).
        """
        if self._filters and not self.accepts(row):
            return None
        if raw_text and isinstance(row, TextRow) and self.table.function is None:
            plan = self._text_plan(row.layout)
            if plan is not None:
                return self._map_text(row, plan)
        out: dict[str, Any] = {}
        for src, dst, fn, _ in self._plan:
            try:
                value = row[src]
            except KeyError:
                raise SchemaChangedError(
                    f"legacy column {self.table.source}.{src} is mapped to {self.table.target}.{dst} but the change "
                    f"stream no longer has it (dropped or renamed?); columns now: {', '.join(sorted(row))}. "
                    "Fix the sync spec, then restart."
                ) from None
            if fn is not None and value is not None and value is not UNAVAILABLE:
                value = self._transform(src, fn, value)
            out[dst] = value
        if self.table.function is not None:
            try:
                result = self.table.function(out)
            except Exception as exc:  # noqa: BLE001
                raise MappingError(f"{self.table.source}: row transform {self.table.transform} failed: {exc}") from exc
            return result
        return out

    def _map_text(self, row: TextRow, plan: list[tuple[str, str, int, Transform | None, bool]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        data = row.data
        for src, dst, i, fn, zoned in plan:
            value = data[i]
            if fn is None and (not zoned or portable_time(value)):
                out[dst] = value  # the server's text, as it is
                continue
            value = row[src]
            if fn is not None and value is not None and value is not UNAVAILABLE:
                value = self._transform(src, fn, value)
            out[dst] = value
        return out

    def _transform(self, src: str, fn: Transform, value: Any) -> Any:
        try:
            return fn(value)
        except MappingError as exc:
            raise MappingError(f"{self.table.source}.{src}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a user transform failing is a poison row
            raise MappingError(f"{self.table.source}.{src}: transform failed on {value!r}: {exc}") from exc

    def _text_plan(self, layout: RowLayout) -> list[tuple[str, str, int, Transform | None, bool]] | None:
        """Per relation layout: (source, target, position, transform or None to keep the text, zoned).

        None when a mapped column is missing (the generic path reports it)."""
        plan = self._text_plans.get(layout)
        if plan is None:
            plan = []
            for src, dst, fn, as_json in self._plan:
                i = layout.index.get(src)
                if i is None:
                    return None
                keep = fn is None or (as_json and i in layout.json)
                plan.append((src, dst, i, None if keep else fn, i in layout.zoned))
            self._text_plans[layout] = plan
        return plan

    def key(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The service table's key values for a legacy row (or key-only before image)."""
        values = []
        for src, _dst in self._key_plan:
            try:
                value = row[src]
            except KeyError:
                raise MappingError(f"{self.table.source}: change has no key column '{src}'") from None
            fn = self._key_fns.get(src)
            if fn is not None and value is not None:
                value = fn(value)
            values.append(value)
        return tuple(values)


# -- SQL pushdown for the initial snapshot -----------------------------------------------------------

_CENTS_EXACT_TYPES = frozenset({"smallint", "integer", "bigint"})


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_projection(table: TableSpec, column_types: Mapping[str, tuple[str, int | None]]) -> tuple[list[str], list[str], list[Any]] | None:
    """The mapping as SQL, when every part of it has an exact SQL equivalent; else None.

    `column_types` maps legacy columns to (information_schema data_type, numeric_scale). Returns
    (select expressions in target column order, WHERE conditions, parameters). Lets the initial
    snapshot run as `COPY (SELECT ...) TO STDOUT` piped into `COPY ... FROM STDIN`.
    """
    if table.function is not None or len(table.key) != 1:
        return None
    exprs: list[str] = []
    for column in table.columns:
        if column.function is not None or column.source not in column_types:
            return None
        data_type, scale = column_types[column.source]
        src = _q(column.source)
        if column.transform is None:
            if column.scale is not None and data_type != "numeric":
                return None
            exprs.append(src)
        elif column.transform == "cents":
            if data_type in _CENTS_EXACT_TYPES:
                exprs.append(f"({src}::bigint * 100)")
            elif data_type == "numeric" and scale is not None and scale <= 2:
                exprs.append(f"({src} * 100)::bigint")
            else:
                return None
        elif column.transform == "lower" and data_type in ("text", "character varying", "character"):
            exprs.append(f"lower({src})")
        elif column.transform == "strip" and data_type in ("text", "character varying", "character"):
            exprs.append(f"btrim({src}, E' \\t\\n\\r\\f\\v')")
        elif column.transform == "json" and data_type in ("json", "jsonb", "text"):
            exprs.append(f"{src}::jsonb")
        else:
            return None
    where: list[str] = []
    params: list[Any] = []
    for f in table.filters:
        col = _q(f.column)
        if f.op == "eq":
            where.append(f"{col} IS NOT DISTINCT FROM %s")
        elif f.op == "ne":
            where.append(f"{col} IS DISTINCT FROM %s")
        elif f.op == "in":
            where.append(f"COALESCE({col} = ANY(%s), false)")
        elif f.op == "not_in":
            where.append(f"NOT COALESCE({col} = ANY(%s), false)")
        elif f.op == "startswith":
            where.append(f"COALESCE(starts_with({col}::text, %s), false)")
        elif f.op == "not_startswith":
            where.append(f"NOT COALESCE(starts_with({col}::text, %s), false)")
        elif f.op == "is_null":
            where.append(f"({col} IS NULL) = %s")
        else:
            where.append(f"{col} {({'gt': '>', 'gte': '>=', 'lt': '<', 'lte': '<='})[f.op]} %s")
        params.append(bool(f.value) if f.op == "is_null" else f.value)
    return exprs, where, params
