"""The source relations compared with the spec and the target on every start of a sync.

The applier catches a mapped column that changes type while it streams (`SchemaGuard`); one
retyped or dropped while no applier ran arrives already changed. So each `cdc run` first reads
both catalogs: every mapped legacy column must exist, and its type must still fit the service
column it is written to (PostgreSQL's type categories: numbers, strings, booleans, date/time,
...; a text column takes any value, `cents` and `from_cents` need a number on both sides). A misfit stops the
run with `SchemaChangedError`, as a retype seen live does.
"""

from __future__ import annotations

from typing import Any

from cdc.exceptions import SchemaChangedError
from cdc.spec import SyncSpec, TableSpec

__all__ = ["check_relations", "fits"]

_COLUMNS = """
SELECT a.attname::text, t.typname::text, t.typcategory::text
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
"""

_CATEGORY = {"N": "a number", "S": "a string", "B": "a boolean", "D": "a date/time", "T": "an interval",
             "E": "an enum", "A": "an array", "U": "a value of its own type"}
_JSON = {"json", "jsonb"}


def _columns(conn: Any, schema: str, table: str) -> dict[str, tuple[str, str]]:
    """column -> (type name, type category); empty when the table does not exist."""
    with conn.cursor() as cur:
        cur.execute(_COLUMNS, ('"' + schema.replace('"', '""') + '"."' + table.replace('"', '""') + '"',))
        rows = cur.fetchall()
    conn.rollback()
    return {name: (type_name, category) for name, type_name, category in rows}


def fits(source: tuple[str, str], target: tuple[str, str], transform: str | None) -> bool:
    """Whether a legacy column of type `source` (name, category) can fill `target` through `transform`."""
    (s_name, s_cat), (t_name, t_cat) = source, target
    if transform in ("cents", "from_cents"):
        return s_cat == "N" and t_cat == "N"
    if transform == "json" or t_name in _JSON:
        return t_name in _JSON or t_cat == "S"
    if t_cat == "S" or (s_cat, t_cat) in {("S", "E"), ("E", "S")}:
        return True
    if s_cat != t_cat:
        return False
    return s_cat != "U" or s_name == t_name or {s_name, t_name} <= _JSON


def _table_problems(table: TableSpec, source: dict[str, tuple[str, str]], target: dict[str, tuple[str, str]]) -> list[str]:
    problems = []
    if not source:
        return [f"source table {table.source} does not exist"]
    for column in table.columns:
        have = source.get(column.source)
        if have is None:
            problems.append(f"legacy column {table.source}.{column.source} is mapped but no longer exists (dropped?)")
            continue
        want = target.get(column.target)
        if want is None or table.transform is not None:
            continue  # a missing target column is the applier's error; a table transform decides types itself
        if not fits(have, want, column.transform):
            via = f" through {column.transform}" if column.transform else ""
            problems.append(
                f"legacy column {table.source}.{column.source} is {have[0]} ({_CATEGORY.get(have[1], have[1])}), "
                f"which cannot fill {table.target}.{column.target} ({want[0]}){via}"
            )
    return problems


def check_relations(spec: SyncSpec, source: Any, target: Any) -> None:
    """Raise `SchemaChangedError` naming every mapped column that is gone or no longer fits.

    `source` and `target` are open connections (psycopg2) to the two databases.
    """
    problems = []
    for table in spec.tables:
        problems += _table_problems(table, _columns(source, table.source_schema, table.source_table),
                                    _columns(target, table.target_schema, table.target_table))
    if problems:
        raise SchemaChangedError(
            f"{spec.path}: the source no longer fits the sync spec: {'; '.join(problems)}. Change the legacy column "
            "back, or fix its mapping (and the service's column) in the spec, then restart the applier."
        )
