"""A row image kept in pgoutput's text form, read as Python values on access.

The capture hands every change on as a `TextRow`: a read-only mapping over the tuple the
server sent. Reading a column (`row["price"]`, `.items()`, `dict(row)`) converts it by its type
OID as `cdc.pgoutput.convert_value` does (JSON only once: it is mutable), so the Debezium
encoding, filters, keys and transforms see the same typed values as before. `raw(name)` gives the value as sent, which is
PostgreSQL's own text output: valid input for COPY and SQL literals, so the applier copies
untransformed columns without converting them to Python and back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from cdc.pgoutput import Datum, RelationColumn, TupleData, convert_value, converter_for

__all__ = ["RowLayout", "TextRow", "portable_time"]

# Times whose text carries the walsender session's zone offset.
_ZONED_OIDS = frozenset({1184, 1266})  # timestamptz, timetz
_JSON_OIDS = frozenset({114, 3802})


class RowLayout:
    """The columns of one relation: names, positions, type OIDs and converters (shared by its rows)."""

    __slots__ = ("converters", "index", "json", "names", "oids", "zoned")

    def __init__(self, columns: tuple[RelationColumn, ...]) -> None:
        self.names = tuple(c.name for c in columns)
        self.oids = tuple(c.type_oid for c in columns)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.converters: tuple[Callable[[str], Any] | None, ...] = tuple(converter_for(oid) for oid in self.oids)
        self.zoned = frozenset(i for i, c in enumerate(columns) if c.type_oid in _ZONED_OIDS)
        self.json = frozenset(i for i, c in enumerate(columns) if c.type_oid in _JSON_OIDS)


class TextRow(Mapping[str, Any]):
    """Read-only mapping of column name to Python value over one pgoutput tuple."""

    __slots__ = ("_cache", "data", "layout")

    def __init__(self, layout: RowLayout, values: TupleData) -> None:
        self.layout = layout
        self.data = values  # as sent
        self._cache: dict[int, Any] | None = None

    def __getitem__(self, name: str) -> Any:
        i = self.layout.index[name]
        value = self.data[i]
        convert = self.layout.converters[i]
        if convert is None or value.__class__ is not str:
            return value
        mutable = i in self.layout.json
        if mutable and self._cache is not None and i in self._cache:
            return self._cache[i]
        try:
            converted = convert(value)  # type: ignore[arg-type]
        except (ValueError, ArithmeticError):
            convert_value(self.layout.oids[i], value)  # raises the descriptive PgOutputError
            raise
        if mutable:  # parsed JSON: read once, so every reader sees (and changes) the same object
            if self._cache is None:
                self._cache = {}
            self._cache[i] = converted
        return converted

    def __iter__(self) -> Iterator[str]:
        return iter(self.layout.names)

    def __len__(self) -> int:
        return len(self.layout.names)

    def __contains__(self, name: object) -> bool:
        return name in self.layout.index

    def __repr__(self) -> str:
        return repr(dict(self))

    def raw(self, name: str) -> Datum:
        """The column as the server sent it: text, None (NULL), `UNAVAILABLE` or bytes."""
        return self.data[self.layout.index[name]]


def portable_time(value: Datum) -> bool:
    """Whether a time-with-zone datum reads the same into any column: UTC, as the capture's session
    writes them (the text of another offset would read differently into a column without a zone),
    or an infinity."""
    if value.__class__ is not str:
        return True
    return value.endswith("+00") or value in ("infinity", "-infinity")  # type: ignore[union-attr]
