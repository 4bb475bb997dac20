"""Initial copy of the source tables inside the slot's exported snapshot.

Every table is read in primary-key order, `chunk_rows` rows at a time (keyset pagination), in
one REPEATABLE READ transaction that imported the snapshot; nothing a later change event will
also carry is missed or doubled. Each chunk says where it ended (`last_key`, the key columns'
text values) so an interrupted copy can resume after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from cdc.events import ChangeEvent, Position, Source
from cdc.exceptions import CDCError
from cdc.pgoutput import convert_value
from cdc.slot import TableInfo

__all__ = ["Snapshot", "SnapshotChunk", "SnapshotProgress"]


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
        try:
            conn = psycopg2.connect(self.dsn)
        except psycopg2.Error as exc:
            raise CDCError(f"cannot connect to the source for the snapshot: {str(exc).strip()}") from exc
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
