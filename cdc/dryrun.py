"""`cdc run --dry-run`: the snapshot tried on a sample, into a scratch schema, and taken back.

The source is read in one REPEATABLE READ, read-only transaction (no slot, no publication: a
consistent read is all a trial copy needs), in key order, `chunk_rows` at a time. Each row goes
through the spec's `RowMapper`: filtered out, rejected (a `MappingError`, or the target refusing
the mapped row: these would become dead letters) or mapped. Mapped rows are written into
`strangler_dryrun_<name>`, a scratch schema of tables made `LIKE` the service's, created inside
one target transaction that is never committed: whatever stops the dry-run (its end, an error,
Ctrl-C, SIGTERM, even SIGKILL, as the server aborts a dead session's transaction), the scratch
schema never becomes visible to anyone else and is gone. Before that the scratch copy is diffed
against the same source sample (`cdc.verify.diff_rows`) in the same snapshot.

The measured rate projects the full snapshot's duration and, with the source's WAL rate, the
WAL its slot would hold back meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2.extras import Json, execute_values

from cdc.database import connect, one_line
from cdc.exceptions import CDCError
from cdc.mapping import RowMapper
from cdc.pipeline import stop_on_signals
from cdc.preflight import wal_rate
from cdc.spec import SyncSpec, TableSpec
from cdc.verify import _jsonable, diff_rows

__all__ = ["DryRunResult", "TableDryRun", "dry_run", "scratch_schema"]

EXAMPLES = 5
ProgressFn = Callable[[str, int, int], None]


def scratch_schema(spec: SyncSpec) -> str:
    """The name of a dry-run's scratch schema on the target."""
    return f"strangler_dryrun_{spec.name}"


@dataclass(slots=True)
class TableDryRun:
    """What the trial copy of one table did."""

    source: str
    target: str
    estimated_rows: int
    read: int = 0
    filtered: int = 0
    mapped: int = 0
    rejected: int = 0
    seconds: float = 0.0
    examples: list[dict[str, Any]] = field(default_factory=list)
    verify: dict[str, Any] | None = None

    @property
    def rate(self) -> float:
        """Rows read per second, mapping and writing included."""
        return self.read / self.seconds if self.seconds > 0 else 0.0

    @property
    def projected_seconds(self) -> float | None:
        return self.estimated_rows / self.rate if self.rate > 0 else None


@dataclass(slots=True)
class DryRunResult:
    """Every table's trial copy, and what the full snapshot would take."""

    spec: str
    scratch_schema: str | None
    sample: int | None
    tables: list[TableDryRun] = field(default_factory=list)
    wal_bytes_per_second: float = 0.0
    interrupted: bool = False

    @property
    def projected_seconds(self) -> float | None:
        parts = [t.projected_seconds for t in self.tables]
        return sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None

    @property
    def projected_wal_bytes(self) -> int | None:
        seconds = self.projected_seconds
        return int(self.wal_bytes_per_second * seconds) if seconds is not None else None

    @property
    def verified(self) -> bool:
        """Every written table's scratch copy holds exactly the sample's mapped rows."""
        return all(t.verify is None or t.verify["ok"] for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec, "scratch_schema": self.scratch_schema, "sample": self.sample,
            "interrupted": self.interrupted, "verified": self.verified,
            "wal_bytes_per_second": round(self.wal_bytes_per_second, 1),
            "projected_seconds": self.projected_seconds, "projected_wal_bytes": self.projected_wal_bytes,
            "tables": [{**asdict(t), "rate": round(t.rate, 1), "projected_seconds": t.projected_seconds}
                       for t in self.tables],
        }


def _q(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _source_select(table: TableSpec, sample: int | None) -> str:
    wanted = list(dict.fromkeys([*table.source_columns, *(f.column for f in table.filters)]))
    return (f"SELECT {', '.join(_q(c) for c in wanted)} FROM {_q(table.source_schema, table.source_table)} "
            f"ORDER BY {', '.join(_q(k) for k in table.key)}" + (f" LIMIT {int(sample)}" if sample is not None else ""))


def _rows(conn: Any, statement: str, name: str, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    """Chunks of rows (as dicts) from a server-side cursor."""
    with conn.cursor(name=name) as cur:
        cur.itersize = chunk_rows
        cur.execute(statement)
        while True:
            rows = cur.fetchmany(chunk_rows)
            if not rows:
                return
            columns = [d[0] for d in cur.description]
            yield [dict(zip(columns, row, strict=True)) for row in rows]


def _estimate(conn: Any, table: TableSpec) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (_q(table.source_schema, table.source_table),))
        estimate = int(cur.fetchone()[0])
        if estimate < 0:  # never analysed
            cur.execute(f"SELECT count(*) FROM {_q(table.source_schema, table.source_table)}")
            estimate = int(cur.fetchone()[0])
    return estimate


def _adapt(value: Any) -> Any:
    return Json(value) if isinstance(value, (dict, list)) else value


class _Scratch:
    """The scratch tables on the target, inside the dry-run's one uncommitted transaction."""

    def __init__(self, conn: Any, schema: str) -> None:
        self.conn = conn
        self.schema = schema
        with conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {_q(schema)}")

    def table(self, table: TableSpec) -> str:
        return _q(self.schema, f"{table.target_schema}__{table.target_table}")

    def create(self, table: TableSpec) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (_q(table.target_schema, table.target_table),))
            if not cur.fetchone()[0]:
                raise CDCError(f"target table {table.target} does not exist; run the service's migrations first "
                               f"(or try the mapping alone with --no-write)")
            cur.execute(f"CREATE TABLE {self.table(table)} (LIKE {_q(table.target_schema, table.target_table)} "
                        "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES INCLUDING GENERATED)")

    def write(self, table: TableSpec, rows: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[tuple[tuple[Any, ...], str]]:
        """Insert (key, mapped row) pairs; the (key, reason) of each row the target refuses."""
        if not rows:
            return []
        columns = list(rows[0][1])
        statement = f"INSERT INTO {self.table(table)} ({', '.join(_q(c) for c in columns)}) VALUES %s"
        with self.conn.cursor() as cur:
            cur.execute("SAVEPOINT dryrun_chunk")
            try:
                execute_values(cur, statement, [tuple(_adapt(r[c]) for c in columns) for _, r in rows], page_size=1000)
                return []
            except psycopg2.Error:
                cur.execute("ROLLBACK TO SAVEPOINT dryrun_chunk")
            refused = []
            for key, row in rows:  # one by one, to name the rows refused
                cur.execute("SAVEPOINT dryrun_row")
                try:
                    execute_values(cur, statement, [tuple(_adapt(row[c]) for c in columns)])
                except psycopg2.Error as exc:
                    cur.execute("ROLLBACK TO SAVEPOINT dryrun_row")
                    refused.append((key, f"the target refuses it: {one_line(exc)}"))
            return refused

    def verify(self, source: Any, table: TableSpec, sample: int | None, rejected: int, chunk_rows: int) -> dict[str, Any]:
        source_rows = (r for chunk in _rows(source, _source_select(table, sample), "dryrun_verify_src", chunk_rows)
                       for r in chunk)
        target_sql = (f"SELECT {', '.join(_q(c) for c in table.target_columns)} FROM {self.table(table)} "
                      f"ORDER BY {', '.join(_q(k) for k in table.target_key)}")
        target_rows = (r for chunk in _rows(self.conn, target_sql, "dryrun_verify_dst", chunk_rows) for r in chunk)
        diff = diff_rows(table, source_rows, target_rows)
        # Rejected rows are expected to be missing from the scratch copy, nothing else.
        ok = diff.mismatched == 0 and diff.only_in_target == 0 and diff.only_in_source == rejected
        return {"ok": ok, "matching": diff.matching, "mismatched": diff.mismatched,
                "only_in_source": diff.only_in_source, "only_in_target": diff.only_in_target, "samples": diff.samples}


def _table(
    source: Any, scratch: _Scratch | None, table: TableSpec, sample: int | None, chunk_rows: int,
    stop: threading.Event, progress: ProgressFn | None,
) -> TableDryRun:
    estimate = _estimate(source, table)
    result = TableDryRun(source=table.source, target=table.target, estimated_rows=estimate)
    mapper = RowMapper(table)
    total = min(estimate, sample) if sample is not None else estimate
    if scratch is not None:
        scratch.create(table)
    started = time.monotonic()

    def reject(row: dict[str, Any] | tuple[Any, ...], reason: str) -> None:
        result.rejected += 1
        if len(result.examples) < EXAMPLES:
            key = list(row) if isinstance(row, tuple) else [row.get(k) for k in table.key]
            result.examples.append({"key": _jsonable(key), "reason": reason})

    for chunk in _rows(source, _source_select(table, sample), "dryrun_read", chunk_rows):
        mapped: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        for row in chunk:
            try:
                out = mapper.map(row)
            except CDCError as exc:
                reject(row, str(exc))
                continue
            if out is None:
                result.filtered += 1
            else:
                mapped.append((tuple(row.get(k) for k in table.key), out))
        result.read += len(chunk)
        result.mapped += len(mapped)
        if scratch is not None:
            for key, reason in scratch.write(table, mapped):
                result.mapped -= 1
                reject(key, reason)
        if progress is not None:
            progress(table.source, result.read, max(total, result.read))
        if stop.is_set():
            break
    result.seconds = time.monotonic() - started
    return result


def dry_run(
    spec: SyncSpec,
    *,
    sample: int | None = 1000,
    write: bool = True,
    chunk_rows: int = 1000,
    wal_sample_seconds: float = 0.5,
    progress: ProgressFn | None = None,
    on_stage: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> DryRunResult:
    """Map `sample` rows per table (None: all) through the spec, into a scratch schema unless
    `write` is False, verify it and take everything back. A stop (SIGINT/SIGTERM or `stop`)
    ends it after the chunk in progress, the result marked `interrupted`."""
    if not spec.source_url:
        raise CDCError(f"{spec.path}: no source database; set source.url in the spec or give --source-url")
    if write and not spec.target_url:
        raise CDCError(f"{spec.path}: the dry-run writes into a scratch schema on the target; give --target-url, "
                       "or map in memory only with --no-write")
    if sample is not None and sample < 1:
        raise CDCError(f"--sample {sample} must be at least 1 (or use --all)")
    if chunk_rows < 1:
        raise CDCError(f"--chunk-rows {chunk_rows} must be at least 1")
    stop = stop or threading.Event()
    stage = on_stage or (lambda _message: None)
    result = DryRunResult(spec=spec.path, scratch_schema=scratch_schema(spec) if write else None, sample=sample)
    source = connect(spec.source_url, "source")
    target = None
    try:
        target = connect(spec.target_url or "", "target") if write else None
        with stop_on_signals(stop):
            source.autocommit = True  # the WAL rate is read outside the copy's transaction
            result.wal_bytes_per_second = wal_rate(source, wal_sample_seconds)
            source.autocommit = False
            source.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
            scratch = _Scratch(target, result.scratch_schema or "") if target is not None else None
            for table in spec.tables:
                if stop.is_set():
                    break
                where = f"scratch schema {result.scratch_schema}" if scratch else "memory only"
                stage(f"dry-run: reading {table.source} into {where}")
                result.tables.append(_table(source, scratch, table, sample, chunk_rows, stop, progress))
            result.interrupted = stop.is_set()
            if scratch is not None and not result.interrupted:
                for t, table in zip(result.tables, spec.tables):
                    stage(f"dry-run: verifying {table.target} against the source sample")
                    t.verify = scratch.verify(source, table, sample, t.rejected, chunk_rows)
    except psycopg2.Error as exc:
        raise CDCError(f"{spec.path}: dry-run failed: {one_line(exc)}") from exc
    finally:
        source.close()
        if target is not None:
            # Never committed: rolling back (or the session ending) removes the scratch schema.
            try:
                target.rollback()
            finally:
                target.close()
            stage("dry-run: nothing left behind (no slot, no publication, scratch schema rolled back)")
    return result
