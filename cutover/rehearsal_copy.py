"""The rehearsal's scratch copy of the legacy database, made with PostgreSQL's own tools.

`copy_database(source, target, sample=N)` loads the source's schema into the scratch database
in pg_dump's two sections around the rows: `pre-data` (types, tables, sequences), then the rows
of every table (the first N in key order, or all) streamed from `COPY (...) TO STDOUT` on the
source straight into `COPY ... FROM STDIN` on the target, psql to psql through an OS pipe, then
`post-data` (indexes, constraints, triggers: after the rows, so triggers do not fire on the copy).
A sample keeps its foreign keys `NOT VALID`: rows it left out may be referenced, and new rows are
still checked. Sequences take the source's values, so new rows do not collide with copied ones.

The source is only read: one `pg_dump --schema-only` per section and one `COPY ... TO` per table.
Publications, subscriptions, owners, privileges and the toolkit's own `strangler*` schemas are
left out (the scratch CDC creates its own).
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from cdc.database import one_line
from cutover.exceptions import CutoverError

__all__ = ["CopyResult", "TableCopy", "copy_database"]

_DUMP_OPTIONS = (
    "--schema-only", "--no-owner", "--no-privileges", "--no-publications", "--no-subscriptions",
    "--no-tablespaces", "--no-security-labels", "--exclude-schema=strangler*",
)
_FOREIGN_KEY = re.compile(r"^(\s*ADD CONSTRAINT .+ FOREIGN KEY .+?);\s*$", re.M)
_COPIED = re.compile(r"^COPY (\d+)", re.M)

_TABLES = """
SELECT n.nspname, c.relname, c.reltuples::bigint,
       array(SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
             ORDER BY a.attnum),
       array(SELECT a.attname FROM pg_index i
             JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.ord)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT LIKE 'strangler%'
ORDER BY n.nspname, c.relname
"""

_SEQUENCES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'strangler%'
"""


@dataclass(frozen=True)
class TableCopy:
    """One table of the copy: rows copied, the source's row estimate (None: never analysed), seconds."""

    table: str
    rows: int
    source_rows: int | None
    seconds: float


@dataclass
class CopyResult:
    """What the scratch copy holds and how long each part took."""

    sample: int | None
    tables: list[TableCopy] = field(default_factory=list)
    sequences: int = 0
    schema_seconds: float = 0.0
    rows_seconds: float = 0.0
    constraints_seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(table.rows for table in self.tables)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": self.rows}


def _tool(bin_dir: Path, name: str) -> str:
    path = bin_dir / name
    if not path.exists():
        raise CutoverError(f"{name} is not in {bin_dir}; the rehearsal copies the legacy database with PostgreSQL's own tools")
    return str(path)


def _psql(bin_dir: Path, url: str, *args: str) -> list[str]:
    return [_tool(bin_dir, "psql"), "--no-psqlrc", "--set=ON_ERROR_STOP=1", f"--dbname={url}", *args]


def _run(args: list[str], what: str, *, stdin: str | None = None) -> str:
    done = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CutoverError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}")
    return done.stdout


def _dump(bin_dir: Path, source_url: str, section: str) -> str:
    return _run(
        [_tool(bin_dir, "pg_dump"), *_DUMP_OPTIONS, f"--section={section}", f"--dbname={source_url}"],
        f"pg_dump --section={section} of the legacy database (check --source-url)",
    )


def _copy_rows(bin_dir: Path, source_url: str, target_url: str, table: str, columns: list[str], key: list[str],
               sample: int | None) -> int:
    """`COPY (SELECT ...) TO STDOUT` on the source piped into `COPY ... FROM STDIN` on the target."""
    names = ", ".join(_ident(column) for column in columns)
    schema, _, name = table.partition(".")
    qualified = f"{_ident(schema)}.{_ident(name)}"
    query = f"SELECT {names} FROM {qualified}"
    if key:
        query += " ORDER BY " + ", ".join(_ident(column) for column in key)
    if sample is not None:
        query += f" LIMIT {int(sample)}"
    reader = subprocess.Popen(_psql(bin_dir, source_url, "--command", f"COPY ({query}) TO STDOUT"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        writer = subprocess.run(_psql(bin_dir, target_url, "--command", f"COPY {qualified} ({names}) FROM STDIN"),
                                stdin=reader.stdout, capture_output=True, text=True, check=False)
    finally:
        assert reader.stdout is not None
        reader.stdout.close()
        read_error = reader.stderr.read().decode(errors="replace") if reader.stderr is not None else ""
        reader.wait()
        if reader.stderr is not None:
            reader.stderr.close()
    if reader.returncode != 0:
        raise CutoverError(f"reading {table} from the legacy database failed: {read_error.strip()[-1500:]}")
    if writer.returncode != 0:
        raise CutoverError(f"writing {table} into the scratch copy failed: {writer.stderr.strip()[-1500:]}")
    found = _COPIED.search(writer.stdout)
    return int(found.group(1)) if found else 0


def _ident(name: str) -> str:
    """An SQL identifier, double-quoted (psql gets the commands as text, no connection to quote with)."""
    return '"' + name.replace('"', '""') + '"'


def copy_database(source_url: str, target_url: str, *, bin_dir: Path, sample: int | None) -> CopyResult:
    """Copy schema and rows (the first `sample` of each table in key order, or all with None)."""
    result = CopyResult(sample)
    started = time.monotonic()
    pre = _dump(bin_dir, source_url, "pre-data")
    post = _dump(bin_dir, source_url, "post-data")
    _run(_psql(bin_dir, target_url), "loading the legacy schema into the scratch copy", stdin=pre)
    result.schema_seconds = time.monotonic() - started
    try:
        conn = psycopg2.connect(source_url)
    except psycopg2.Error as exc:
        raise CutoverError(f"cannot connect to the legacy database: {one_line(exc)}; check --source-url") from exc
    try:
        conn.set_session(readonly=True, autocommit=True)
        with conn.cursor() as cur:
            cur.execute(_TABLES)
            tables = cur.fetchall()
            cur.execute(_SEQUENCES)
            sequences = []
            for schema, name in cur.fetchall():
                # Read from the sequence itself: pg_sequences hides a value set with is_called false.
                cur.execute(f"SELECT last_value, is_called FROM {_ident(schema)}.{_ident(name)}")
                sequences.append((schema, name, *cur.fetchone()))
    finally:
        conn.close()
    started = time.monotonic()
    for schema, name, estimate, columns, key in tables:
        began = time.monotonic()
        table = f"{schema}.{name}"
        rows = _copy_rows(bin_dir, source_url, target_url, table, list(columns), list(key), sample)
        result.tables.append(TableCopy(table, rows, int(estimate) if estimate is not None and estimate >= 0 else None,
                                       round(time.monotonic() - began, 3)))
    result.rows_seconds = time.monotonic() - started
    started = time.monotonic()
    if sample is not None:
        post = _FOREIGN_KEY.sub(r"\1 NOT VALID;", post)
    setvals = "".join(
        "SELECT pg_catalog.setval('{}', {}, {});\n".format(
            f"{_ident(schema)}.{_ident(name)}".replace("'", "''"), int(value), "true" if called else "false")
        for schema, name, value, called in sequences
    )
    _run(_psql(bin_dir, target_url), "loading the legacy indexes and constraints into the scratch copy", stdin=post + setvals)
    result.sequences = len(sequences)
    result.constraints_seconds = time.monotonic() - started
    return result
