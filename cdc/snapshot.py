"""Initial copy of the source tables inside the slot's exported snapshot.

Every table is read in primary-key order, `chunk_rows` rows at a time (keyset pagination), in
one REPEATABLE READ transaction that imported the snapshot; nothing a later change event will
also carry is missed or doubled. Each chunk says where it ended (`last_key`, the key columns'
text values) so an interrupted copy can resume after it.

`snapshot_tables` fills the target: with SQL pushdown when the whole mapping has exact SQL
equivalents (`COPY (SELECT mapped columns ...) TO STDOUT` piped into `COPY ... FROM STDIN` by
`copy_pipe`, chunked by key ranges), otherwise from `Snapshot`'s chunks mapped in Python and
bulk-loaded; the applier commits the checkpoint with each chunk either way.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from cdc.apply import Applier
from cdc.database import connect
from cdc.events import ChangeEvent, Position, Source
from cdc.exceptions import CDCError
from cdc.mapping import RowMapper, sql_projection
from cdc.pgoutput import convert_value
from cdc.slot import TableInfo, describe_tables
from cdc.spec import SyncSpec, TableSpec

__all__ = ["SNAPSHOT_CHUNK_ROWS", "ProgressFn", "Snapshot", "SnapshotChunk", "SnapshotProgress", "copy_pipe",
           "snapshot_tables"]

ProgressFn = Callable[[str, int, int], None]
SNAPSHOT_CHUNK_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class SnapshotProgress:
    table: str
    rows_done: int
    rows_estimated: int
    total_done: int
    total_estimated: int


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Up to `chunk_rows` rows of one table, converted like streamed values.

    `raw_rows` holds the same rows as PostgreSQL text (None for NULL), in `table.columns`
    order, for appliers that bulk-load; `done` marks the table's last chunk (possibly empty).
    """

    table: TableInfo
    rows: list[dict[str, Any]]
    raw_rows: list[tuple[str | None, ...]]
    last_key: tuple[str, ...] | None
    position: Position
    done: bool
    last: bool
    server_name: str
    database: str
    ts_ms: int

    def events(self) -> list[ChangeEvent]:
        """The rows as `op="r"` change events (the very last row of the snapshot says "last")."""
        keys = self.table.key_columns
        columns = self.table.columns
        source = Source(
            name=self.server_name, db=self.database, schema=self.table.schema, table=self.table.name,
            lsn=None, commit_lsn=self.position[0], tx_id=None, ts_ms=self.ts_ms, snapshot="true",
        )
        events = [
            ChangeEvent("r", source, {k: row[k] for k in keys}, None, row, self.ts_ms, columns)
            for row in self.rows
        ]
        if self.last and events:
            tail = events[-1]
            last_source = Source(
                name=source.name, db=source.db, schema=source.schema, table=source.table,
                lsn=None, commit_lsn=source.commit_lsn, tx_id=None, ts_ms=source.ts_ms, snapshot="last",
            )
            events[-1] = ChangeEvent("r", last_source, tail.key, None, tail.after, tail.ts_ms, columns)
        return events


class Snapshot:
    """Copies `tables` as of `snapshot_name` (exported by the slot), positioned at `consistent_point`.

    `resume` maps a table's qualified name to the `last_key` of the last chunk already applied;
    tables listed in `completed` are skipped. `progress` is called after every chunk.
    """

    def __init__(
        self,
        dsn: str,
        tables: Sequence[TableInfo],
        *,
        snapshot_name: str | None,
        consistent_point: int,
        server_name: str = "legacy",
        chunk_rows: int = 10_000,
        resume: Mapping[str, Sequence[str]] | None = None,
        completed: Sequence[str] = (),
        progress: Callable[[SnapshotProgress], None] | None = None,
    ) -> None:
        if chunk_rows < 1:
            raise CDCError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.dsn = dsn
        self.tables = list(tables)
        self.snapshot_name = snapshot_name
        self.consistent_point = consistent_point
        self.server_name = server_name
        self.chunk_rows = chunk_rows
        self.resume = {name: tuple(key) for name, key in (resume or {}).items()}
        self.completed = set(completed)
        self.progress = progress

    def chunks(self) -> Generator[SnapshotChunk, None, None]:
        conn = connect(self.dsn)
        try:
            conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
            with conn.cursor() as cur:
                if self.snapshot_name is not None:
                    try:
                        cur.execute("SET TRANSACTION SNAPSHOT %s", (self.snapshot_name,))
                    except psycopg2.Error as exc:
                        raise CDCError(
                            f"cannot import snapshot {self.snapshot_name!r}: {str(exc).strip()}; the exported "
                            "snapshot lives only while the replication connection that created the slot "
                            "is open and idle"
                        ) from exc
                database = conn.info.dbname
                todo = [t for t in self.tables if t.qualified not in self.completed]
                estimates = {t.qualified: self._estimate(cur, t) for t in todo}
                total_estimated = sum(estimates.values())
                total_done = 0
                for index, table in enumerate(todo):
                    done_rows = 0
                    for chunk in self._table_chunks(cur, table, database, is_last_table=index == len(todo) - 1):
                        done_rows += len(chunk.rows)
                        total_done += len(chunk.rows)
                        yield chunk
                        if self.progress is not None:
                            self.progress(SnapshotProgress(
                                table.qualified, done_rows, max(done_rows, estimates[table.qualified]),
                                total_done, max(total_done, total_estimated),
                            ))
            conn.rollback()
        finally:
            conn.close()

    @staticmethod
    def _estimate(cur: psycopg2.extensions.cursor, table: TableInfo) -> int:
        cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s", (table.oid,))
        row = cur.fetchone()
        return max(0, int(row[0])) if row else 0

    def _table_chunks(
        self, cur: psycopg2.extensions.cursor, table: TableInfo, database: str, *, is_last_table: bool
    ) -> Iterator[SnapshotChunk]:
        ident = sql.Identifier(table.schema, table.name)
        # Qualified references: a bare ORDER BY name would pick the ::text output column.
        select_list = sql.SQL(", ").join(sql.SQL("src.{}::text").format(sql.Identifier(c.name)) for c in table.columns)
        keys = sql.SQL(", ").join(sql.SQL("src.{}").format(sql.Identifier(k)) for k in table.key_columns)
        params = sql.SQL(", ").join(sql.Placeholder() for _ in table.key_columns)
        first = sql.SQL("SELECT {} FROM {} AS src ORDER BY {} LIMIT %s").format(select_list, ident, keys)
        after = sql.SQL("SELECT {} FROM {} AS src WHERE ({}) > ({}) ORDER BY {} LIMIT %s").format(
            select_list, ident, keys, params, keys
        )
        names = [c.name for c in table.columns]
        oids = table.column_oids
        key_index = [names.index(k) for k in table.key_columns]
        last_key = self.resume.get(table.qualified)
        position = (self.consistent_point, 0)
        while True:
            # One row more than a chunk tells whether this chunk is the table's last.
            if last_key is None:
                cur.execute(first, (self.chunk_rows + 1,))
            else:
                cur.execute(after, (*last_key, self.chunk_rows + 1))
            raw_rows = cur.fetchall()
            done = len(raw_rows) <= self.chunk_rows
            if not done:
                raw_rows.pop()
            rows = [
                {name: convert_value(oid, value) for name, oid, value in zip(names, oids, raw)}
                for raw in raw_rows
            ]
            if raw_rows:
                last_key = tuple(raw_rows[-1][i] for i in key_index)
            yield SnapshotChunk(
                table=table, rows=rows, raw_rows=raw_rows, last_key=last_key, position=position,
                done=done, last=done and is_last_table, server_name=self.server_name,
                database=database, ts_ms=int(time.time() * 1000),
            )
            if done:
                return


# -- copying into the target (SQL pushdown, or rows mapped in Python) -------------------------------


def _q(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _column_types(conn: Any, table: TableSpec) -> dict[str, tuple[str, int | None]]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type, numeric_scale FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (table.source_schema, table.source_table),
        )
        return {r[0]: (r[1], r[2]) for r in cur.fetchall()}


class _Pipe:
    """A file-like bridge: the source's COPY TO writes, the target's COPY FROM reads."""

    def __init__(self) -> None:
        r, w = os.pipe()
        self.reader = os.fdopen(r, "rb", buffering=1 << 20)
        self.writer = os.fdopen(w, "wb", buffering=1 << 20)


class _Counting:
    """Counts the rows (lines) COPY reads through it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.rows = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.rows += data.count(b"\n")
        return data  # type: ignore[no-any-return]

    def readline(self, size: int = -1) -> bytes:
        data = self.raw.readline(size)
        self.rows += data.count(b"\n")
        return data  # type: ignore[no-any-return]


def copy_pipe(source: Any, target: Any, select_sql: str, params: list[Any], target_sql: str) -> int:
    """`COPY (select) TO STDOUT` on `source` streamed into `target_sql` on `target`; rows copied.

    Both are psycopg2 connections; `params` fill the placeholders of `select_sql`. The two COPYs
    run at once, joined by a pipe, so no table is ever held in memory.
    """
    pipe = _Pipe()
    reader = _Counting(pipe.reader)
    error: list[BaseException] = []
    query = source.cursor().mogrify(select_sql, params).decode()

    def produce() -> None:
        try:
            with source.cursor() as cur:
                cur.copy_expert(f"COPY ({query}) TO STDOUT", pipe.writer, size=1 << 18)
        except BaseException as exc:  # handed to the consumer thread
            error.append(exc)
        finally:
            pipe.writer.close()

    thread = threading.Thread(target=produce, name="snapshot-copy", daemon=True)
    thread.start()
    try:
        with target.cursor() as cur:
            cur.copy_expert(target_sql, reader, size=1 << 18)
    finally:
        pipe.reader.close()
        thread.join()
    if error:
        raise error[0]
    return reader.rows


def _pushdown_table(
    applier: Applier, source: Any, table: TableSpec, projection: tuple[list[str], list[str], list[Any]],
    state: dict[str, Any], progress: ProgressFn | None, chunk_rows: int, stop: threading.Event | None,
) -> int:
    exprs, where, params = projection
    src = _q(table.source_schema, table.source_table)
    key = _q(table.key[0])
    with source.cursor() as cur:
        cur.execute("SELECT greatest(reltuples::bigint, 0) FROM pg_class WHERE oid = %s::regclass", (f"{src}",))
        estimate = int(cur.fetchone()[0])
    last = (state["tables"].get(table.source) or [None])[0]
    cols = ", ".join(_q(c) for c in table.target_columns)
    target_sql = f"COPY {_q(table.target_schema, table.target_table)} ({cols}) FROM STDIN"
    done = before = int(state.get("rows", {}).get(table.source, 0))
    conn = applier.conn
    while True:
        with source.cursor() as cur:
            # Qualified: a bare ORDER BY name would sort by the ::text output column, not the key.
            lower = f"src.{key} > %s" if last is not None else "true"
            cur.execute(
                f"SELECT src.{key}::text FROM {src} AS src WHERE {lower} ORDER BY src.{key} OFFSET %s LIMIT 1",
                ([last] if last is not None else []) + [chunk_rows - 1],
            )
            row = cur.fetchone()
        upper = row[0] if row else None
        conds = list(where)
        args = list(params)
        if last is not None:
            conds.append(f"{key} > %s")
            args.append(last)
        if upper is not None:
            conds.append(f"{key} <= %s")
            args.append(upper)
        select = f"SELECT {', '.join(exprs)} FROM {src}" + (f" WHERE {' AND '.join(conds)}" if conds else "")
        try:
            copied = copy_pipe(source, conn, select, args, target_sql)
        except psycopg2.Error as exc:
            conn.rollback()
            raise CDCError(f"snapshot copy of {table.source} into {table.target} failed: {str(exc).strip()}") from exc
        done += copied
        state["tables"][table.source] = [upper] if upper is not None else [last]
        state.setdefault("rows", {})[table.source] = done
        if upper is None:
            state.setdefault("completed", []).append(table.source)
        applier.commit_snapshot_state(state)
        if progress is not None:
            progress(table.source, done, max(done, estimate))
        if upper is None or (stop is not None and stop.is_set()):
            return done - before
        last = upper


def _python_table(
    applier: Applier, spec: SyncSpec, table: TableSpec, snapshot_name: str | None, state: dict[str, Any],
    progress: ProgressFn | None, chunk_rows: int, stop: threading.Event | None,
) -> int:
    conn = connect(spec.source_url or "")
    try:
        infos = describe_tables(conn, [table.source])
    finally:
        conn.close()
    resume = {table.source: state["tables"][table.source]} if state["tables"].get(table.source) else None
    snap = Snapshot(spec.source_url or "", infos, snapshot_name=snapshot_name, consistent_point=state["consistent_point"],
                    server_name=spec.topic_prefix, chunk_rows=chunk_rows, resume=resume,
                    progress=(lambda p: progress(p.table, p.rows_done, p.rows_estimated)) if progress else None)
    mapper = RowMapper(table)
    done = before = int(state.get("rows", {}).get(table.source, 0))
    chunks = snap.chunks()
    try:
        for chunk in chunks:
            rows = [r for r in (mapper.map(row) for row in chunk.rows) if r is not None]
            done += len(chunk.rows)
            if chunk.last_key is not None:
                state["tables"][table.source] = list(chunk.last_key)
            state.setdefault("rows", {})[table.source] = done
            if chunk.done:
                state.setdefault("completed", []).append(table.source)
            applier.copy_rows(table, rows, snapshot=state, position=(state["consistent_point"], 0))
            if stop is not None and stop.is_set():
                break
    finally:
        chunks.close()
    return done - before


def snapshot_tables(
    applier: Applier, spec: SyncSpec, snapshot_name: str | None, state: dict[str, Any],
    *, progress: ProgressFn | None = None, chunk_rows: int = SNAPSHOT_CHUNK_ROWS, stop: threading.Event | None = None,
) -> int:
    """Copy every table not yet completed, inside `snapshot_name`; the checkpoint follows each chunk.

    Returns the rows copied by this call. Once `stop` is set it returns after the chunk in
    progress, the tables not all completed (the next `prepare` resumes after that chunk).
    """
    source = connect(spec.source_url or "")
    total = 0
    try:
        source.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
        with source.cursor() as cur:
            if snapshot_name is not None:
                cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot_name,))
        for table in spec.tables:
            if table.source in state.get("completed", []):
                continue
            if stop is not None and stop.is_set():
                break
            projection = sql_projection(table, _column_types(source, table))
            if projection is not None:
                total += _pushdown_table(applier, source, table, projection, state, progress, chunk_rows, stop)
            else:
                total += _python_table(applier, spec, table, snapshot_name, state, progress, chunk_rows, stop)
        source.rollback()
    finally:
        source.close()
    return total
