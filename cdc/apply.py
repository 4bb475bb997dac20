"""Idempotent, batched apply of change events into the service's store (psycopg2).

One call to `Applier.apply(events)` is one target transaction holding the rows, the per-row
position guards, any dead letters and the checkpoint; `apply_batch` acknowledges the transport's
batch only after that commit. Killed anywhere, the next run resumes from the checkpoint and a
redelivered or older event is a no-op:

- `strangler.checkpoint(name, commit_lsn, lsn, snapshot jsonb, source_ts_ms, in_process)`: the
  last applied position, the snapshot's progress, the source time reached, and whether the
  slot's flush position follows this applier's commits (in-process capture; not over Kafka);
- `strangler.row_position(target_table, pk, commit_lsn, lsn)` (pk: the key as JSON text): the position of the last
  streamed change applied to each row (deletes keep theirs, so a late older insert cannot
  resurrect a row);
- `strangler.table_position(name, target_table, commit_lsn, lsn)`: the last truncate.

Snapshot rows (`op="r"`) order before every streamed change, so one is applied only when no
streamed change has touched its row yet. An unchanged TOASTed column (`UNAVAILABLE`) is left as
it is in the target. The target session carries the replication origin `strangler_<name>` so
capture on this database skips what the applier writes.

Column ownership (`ownership: enforced` in the spec, after the write switch): an update writes
only the legacy-owned columns of a row the service already has; a service-owned column whose
legacy value changed and differs from the service's is recorded in `strangler.conflict`
(`cdc.conflicts`) with both values, in the same transaction, and the service's value stays.
"Changed" is read from the event's before image when the legacy table has `REPLICA IDENTITY
FULL`; without one, any difference from the service's current value counts. Inserts and deletes
keep moving whole rows: a row the service does not have yet (an insert, or an update that brings
a row into the spec's filter) is created in full, and a legacy delete removes it, since the
monolith still decides which rows exist. A running applier's ownership also follows
`strangler.ownership` (`cdc.ownership`): the setting in force for each transaction is the one
recorded from a source position before its commit, read once per batch with updates.

A reverse spec (`direction: reverse`: the service's store feeding the legacy tables) always
enforces it the other way round: updates write only the columns the service owns and a service
change to a legacy-owned column (`stock`) is a conflict recorded in the legacy database. Its
inserts carry the service's ids, so each batch also moves the legacy key's sequence past the
highest id written, and the monolith's own inserts (after a rollback) do not collide. A truncate
of the service table is dead-lettered, never carried into the legacy table.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from cdc import conflicts, deadletter, ownership
from cdc.database import connect as connect_database
from common.waiting import TimedOut, wait_until
from cdc.events import UNAVAILABLE, ChangeEvent
from cdc.exceptions import CDCError, MappingError, SchemaChangedError
from cdc.mapping import RowMapper
from cdc.spec import SyncSpec, TableSpec

__all__ = ["ApplyError", "ApplyResult", "Applier", "Checkpoint", "DDL", "SchemaGuard", "format_lsn"]

DDL = """
CREATE SCHEMA IF NOT EXISTS strangler;
CREATE TABLE IF NOT EXISTS strangler.checkpoint (
    name text PRIMARY KEY,
    commit_lsn bigint NOT NULL DEFAULT 0,
    lsn bigint NOT NULL DEFAULT 0,
    snapshot jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    source_ts_ms bigint NOT NULL DEFAULT 0,
    in_process boolean NOT NULL DEFAULT true
);
ALTER TABLE strangler.checkpoint ADD COLUMN IF NOT EXISTS in_process boolean NOT NULL DEFAULT true;
CREATE TABLE IF NOT EXISTS strangler.row_position (
    target_table text NOT NULL,
    pk text NOT NULL,
    commit_lsn bigint NOT NULL,
    lsn bigint NOT NULL,
    PRIMARY KEY (target_table, pk)
);
CREATE TABLE IF NOT EXISTS strangler.table_position (
    name text NOT NULL,
    target_table text NOT NULL,
    commit_lsn bigint NOT NULL,
    lsn bigint NOT NULL,
    PRIMARY KEY (name, target_table)
);
""" + deadletter.DDL + conflicts.DDL + ownership.DDL

Position = tuple[int, int]


class ApplyError(CDCError):
    """The target refused a batch and the spec says `on_error: stop`, or the target is unusable."""


class AckBatch(Protocol):
    """What `apply_batch` needs of a transport batch."""

    events: list[ChangeEvent]
    position: tuple[int, int]
    heartbeat_ms: int | None

    def ack(self) -> None: ...


def format_lsn(lsn: int) -> str:
    """PostgreSQL's textual LSN (`16/B374D848`)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """Where the applier is: the last applied position and the snapshot's state."""

    position: Position = (0, 0)
    snapshot: Mapping[str, Any] = field(default_factory=dict)
    source_ts_ms: int = 0
    # The slot's flush position moves only past what this applier committed (memory transport).
    in_process: bool = True

    @property
    def snapshot_done(self) -> bool:
        return bool(self.snapshot.get("done"))


@dataclass(slots=True)
class ApplyResult:
    """Counts of one apply call."""

    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    position: Position | None = None


@dataclass(slots=True)
class _Op:
    kind: str  # "upsert" | "delete" | "truncate"
    table: TableSpec
    key: tuple[Any, ...]
    row: dict[str, Any] | None
    position: Position
    snapshot: bool
    event: ChangeEvent


class SchemaGuard:
    """Stops the stream when a mapped legacy column changes type (from the events' column types)."""

    def __init__(self, spec: SyncSpec) -> None:
        self._mapped = {t.source: set(t.source_columns) for t in spec.tables}
        self._types: dict[tuple[str, str], str] = {}
        self._seen: dict[str, Any] = {}

    def check(self, event: ChangeEvent) -> None:
        if event.columns is None:
            return
        table = f"{event.source.schema}.{event.source.table}"
        if self._seen.get(table) is event.columns and event.op != "t":
            return  # the capture reuses one tuple per relation: checked already
        self._seen[table] = event.columns
        mapped = self._mapped.get(table)
        if not mapped:
            return
        present = set()
        for column in event.columns:
            present.add(column.name)
            if column.name not in mapped:
                continue
            known = self._types.setdefault((table, column.name), column.type_name)
            if known != column.type_name:
                raise SchemaChangedError(
                    f"legacy column {table}.{column.name} changed type from {known} to {column.type_name}; the sync "
                    "spec's mapping of it may no longer hold. Check the mapping, then restart the applier."
                )
        if event.op != "t":
            missing = mapped - present
            if missing:
                raise SchemaChangedError(
                    f"legacy column(s) {', '.join(sorted(missing))} of {table} are mapped by the sync spec but no "
                    "longer exist in the source (dropped?). Fix the spec, then restart the applier."
                )


# Groups at least this large are staged with COPY instead of a multi-row VALUES statement.
_COPY_THRESHOLD = 64


class _RowMissing(Exception):
    """A change without some columns (unchanged TOAST) for a row the target does not have."""


def _adapt(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return psycopg2.extras.Json(value)
    return value


_pk_json = conflicts.pk_text


def _ident(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


class Applier:
    """Applies change events for one sync spec into its target database.

    `connect` opens the target connection (default: psycopg2 on `spec.target_url`). `ordered`
    says the transport delivers one totally ordered stream (memory transport, a file): events at
    or before the checkpoint are then skipped as a whole; with Kafka (one partition per table)
    only the per-row guards decide. `in_process` (default: `ordered`) says the capture feeding
    this applier acknowledges the slot only after its commits; the checkpoint records it for
    `cdc status`.
    """

    def __init__(
        self,
        spec: SyncSpec,
        *,
        connect: Callable[[], Any] | None = None,
        ordered: bool = True,
        use_origin: bool = True,
        in_process: bool | None = None,
    ) -> None:
        if connect is None and not spec.target_url:
            raise CDCError(
                f"{spec.path}: no target database: set target.url in the spec, STRANGLER_CATALOG_DATABASE_URL, or --target-url"
            )
        self.spec = spec
        self._connect = connect or (lambda: connect_database(spec.target_url or "", "target"))
        self.ordered = ordered
        self.use_origin = use_origin
        self.in_process = ordered if in_process is None else in_process
        self.mappers = {t.source: RowMapper(t) for t in spec.tables}
        self.guard = SchemaGuard(spec)
        self.conn: Any = None
        self._checkpoint = Checkpoint()
        self._streamed_tables: set[str] = set()
        self._tables: dict[tuple[str, str], TableSpec | None] = {}
        self._column_types: dict[str, dict[str, str]] = {}
        # The ownership rows in force, read once per target transaction that needs them.
        self._policy: ownership.OwnershipPolicy | None = None
        self._sequences: dict[str, str | None] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    def open(self, *, origin_wait: float = 15.0) -> Applier:
        try:
            self.conn = self._connect()
        except psycopg2.Error as exc:
            raise ApplyError(f"cannot connect to the target database: {str(exc).strip()}") from exc
        ensure_schema(self.conn)
        if self.use_origin:
            self._setup_origin(origin_wait)
        self._checkpoint = load_checkpoint(self.conn, self.spec.name)
        with self.conn.cursor() as cur:
            cur.execute("SELECT DISTINCT target_table FROM strangler.row_position")
            self._streamed_tables = {r[0] for r in cur.fetchall()}
        self.conn.commit()
        return self

    def _setup_origin(self, wait: float) -> None:
        name = self.spec.origin_name
        conn = self.conn
        refused: list[str] = []

        def set_up() -> bool:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_replication_origin_oid(%s)", (name,))
                    if cur.fetchone()[0] is None:
                        cur.execute("SELECT pg_replication_origin_create(%s)", (name,))
                    cur.execute("SELECT pg_replication_origin_session_setup(%s)", (name,))
                conn.commit()
                return True
            except (psycopg2.errors.ObjectInUse, psycopg2.errors.UniqueViolation) as exc:
                conn.rollback()
                refused.append(str(exc).strip())
                return False

        # A killed applier's backend may take a moment to notice and release the origin.
        try:
            wait_until(set_up, wait, 0.2, what=f"replication origin {name!r}")
        except TimedOut as exc:
            raise ApplyError(
                f"replication origin {name!r} is in use by another applier ({refused[-1]}); stop it first"
            ) from exc

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def __enter__(self) -> Applier:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def checkpoint(self) -> Checkpoint:
        return self._checkpoint

    # -- applying ----------------------------------------------------------------------------------

    def apply_batch(self, batch: AckBatch, *, snapshot: Mapping[str, Any] | None = None) -> ApplyResult:
        """Apply a transport batch in one transaction, then acknowledge it."""
        result = self.apply(batch.events, position=batch.position, snapshot=snapshot,
                            source_ts_ms=batch.heartbeat_ms or 0)
        batch.ack()
        return result

    def apply(
        self,
        events: Sequence[ChangeEvent],
        *,
        position: Position | None = None,
        snapshot: Mapping[str, Any] | None = None,
        source_ts_ms: int = 0,
    ) -> ApplyResult:
        """Apply events (in stream order) in one target transaction, with the checkpoint.

        `source_ts_ms`: the source's clock reached (a heartbeat's), when later than the events'."""
        if self.conn is None:
            self.open()
        result = ApplyResult()
        ops: list[_Op] = []
        poison: list[tuple[ChangeEvent, str]] = []
        last = position
        cp = self._checkpoint.position
        tables = self._tables
        for event in events:
            pos = event.position
            if last is None or pos > last:
                last = pos
            if self.ordered and event.op != "r" and pos <= cp:
                result.skipped += 1
                continue
            source = event.source
            try:
                table = tables[(source.schema, source.table)]
            except KeyError:
                table = tables[(source.schema, source.table)] = self.spec.table_for(source.schema, source.table)
            if table is None:
                result.skipped += 1
                continue
            self.guard.check(event)
            try:
                ops.extend(self._ops(table, event))
            except MappingError as exc:
                poison.append((event, str(exc)))
        self._run(ops, poison, result, last, snapshot, source_ts_ms)
        return result

    def _ops(self, table: TableSpec, event: ChangeEvent) -> list[_Op]:
        mapper = self.mappers[table.source]
        pos = event.position
        snap = event.op == "r"
        if event.op == "t":
            if self.spec.reverse:
                raise MappingError(f"a truncate of the service table {table.source} is not carried into the legacy table "
                                   f"{table.target} (the monolith still decides which rows exist); delete the rows "
                                   "explicitly, or let the forward stream's snapshot copy them again")
            return [_Op("truncate", table, (), None, pos, False, event)]
        if event.op == "d":
            image = event.before or event.key
            if not image:
                raise MappingError(f"delete on {table.source} carries no key (before and key are empty)")
            return [_Op("delete", table, mapper.key(image), None, pos, False, event)]
        if event.after is None:
            raise MappingError(f"{event.op!r} event on {table.source} has no 'after' row")
        key = mapper.key(event.after)
        out: list[_Op] = []
        if event.op == "u" and event.before:
            try:
                old_key = mapper.key(event.before)
            except MappingError:
                old_key = key
            if old_key != key:
                out.append(_Op("delete", table, old_key, None, pos, False, event))
        row = mapper.map(event.after, raw_text=True)
        if row is None:
            out.append(_Op("delete", table, key, None, pos, snap, event))
        else:
            out.append(_Op("upsert", table, key, row, pos, snap, event))
        return out

    def _run(
        self,
        ops: list[_Op],
        poison: list[tuple[ChangeEvent, str]],
        result: ApplyResult,
        last: Position | None,
        snapshot: Mapping[str, Any] | None,
        source_ts_ms: int = 0,
    ) -> None:
        if poison and self.spec.on_error == "stop":
            event, reason = poison[0]
            raise ApplyError(f"event at {event.position} on {event.source.schema}.{event.source.table} cannot be "
                             f"mapped: {reason} (on_error: stop)")
        conn = self.conn
        self._policy = None
        try:
            with conn.cursor() as cur:
                try:
                    result.applied += self._execute(cur, ops)
                except (psycopg2.Error, _RowMissing) as exc:
                    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
                        raise
                    conn.rollback()
                    self._policy = None  # its lock went with the rollback: read it again
                    if self.spec.on_error == "stop":
                        raise ApplyError(f"the target refused a batch: {str(exc).strip()} (on_error: stop)") from exc
                    result.applied = 0
                    result.applied += self._execute_one_by_one(cur, ops, poison)
                for event, reason in poison:
                    deadletter.insert(cur, self.spec.name, event, reason)
                    result.dead_lettered += 1
                new_cp = self._checkpoint
                if last is not None or snapshot is not None:
                    new_pos = max(last or (0, 0), self._checkpoint.position)
                    snap = dict(snapshot) if snapshot is not None else dict(self._checkpoint.snapshot)
                    ts = max((o.event.source.ts_ms for o in ops), default=self._checkpoint.source_ts_ms)
                    ts = max(ts, source_ts_ms)
                    cur.execute(
                        "INSERT INTO strangler.checkpoint (name, commit_lsn, lsn, snapshot, updated_at, source_ts_ms, "
                        "in_process) VALUES (%s, %s, %s, %s::jsonb, now(), %s, %s) ON CONFLICT (name) DO UPDATE SET "
                        "commit_lsn = EXCLUDED.commit_lsn, lsn = EXCLUDED.lsn, snapshot = EXCLUDED.snapshot, "
                        "updated_at = now(), source_ts_ms = GREATEST(strangler.checkpoint.source_ts_ms, EXCLUDED.source_ts_ms), "
                        "in_process = EXCLUDED.in_process",
                        (self.spec.name, new_pos[0], new_pos[1], json.dumps(snap, default=str), ts, self.in_process),
                    )
                    new_cp = Checkpoint(position=new_pos, snapshot=snap, source_ts_ms=max(ts, self._checkpoint.source_ts_ms),
                                        in_process=self.in_process)
            conn.commit()
        except psycopg2.Error as exc:
            try:
                conn.rollback()
            except psycopg2.Error:
                pass
            raise ApplyError(f"applying to the target failed: {str(exc).strip()}") from exc
        except BaseException:
            try:
                conn.rollback()
            except psycopg2.Error:
                pass
            raise
        self._checkpoint = new_cp
        result.position = new_cp.position

    # -- SQL ---------------------------------------------------------------------------------------

    def _execute(self, cur: Any, ops: list[_Op]) -> int:
        """All ops in bulk; truncates split the list into segments applied in order."""
        applied = 0
        segment: list[_Op] = []
        for op in ops:
            if op.kind == "truncate":
                applied += self._segment(cur, segment)
                segment = []
                applied += self._truncate(cur, op)
            else:
                segment.append(op)
        applied += self._segment(cur, segment)
        return applied

    def _execute_one_by_one(self, cur: Any, ops: list[_Op], poison: list[tuple[ChangeEvent, str]]) -> int:
        """After a bulk failure: each op under its own savepoint; failures become dead letters."""
        applied = 0
        failed: set[int] = set()
        for op in ops:
            if id(op.event) in failed:
                continue
            cur.execute("SAVEPOINT strangler_op")
            try:
                try:
                    applied += self._truncate(cur, op) if op.kind == "truncate" else self._segment(cur, [op])
                except psycopg2.errors.UniqueViolation as exc:
                    if self.ordered or op.kind != "upsert":
                        raise
                    cur.execute("ROLLBACK TO SAVEPOINT strangler_op")
                    if self._resolve_unique(cur, op, exc):
                        applied += self._segment(cur, [op])
                cur.execute("RELEASE SAVEPOINT strangler_op")
            except (psycopg2.Error, _RowMissing) as exc:
                if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT strangler_op")
                failed.add(id(op.event))
                poison.append((op.event, f"{type(exc).__name__}: {str(exc).strip()}"))
        return applied

    def _resolve_unique(self, cur: Any, op: _Op, exc: Any) -> bool:
        """A unique value held by another row, seen out of order (Kafka: one partition per key).

        The source enforces the constraint at every commit, so one of the two rows is stale:
        the one with the older position. Returns True to retry the op after removing the
        stale target row; False when the op itself is the stale one (skipped: a newer change
        of its row is still to come). Raises again when undecidable.
        """
        table = op.table
        constraint = getattr(exc.diag, "constraint_name", None)
        if not constraint or op.row is None:
            raise exc
        cur.execute(
            "SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_constraint c "
            "CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum "
            "WHERE c.conname = %s AND c.conrelid = %s::regclass",
            (constraint, f"{_ident(table.target_schema, table.target_table)}"),
        )
        row = cur.fetchone()
        columns = row[0] if row and row[0] else None
        if not columns or any(c not in op.row for c in columns):
            raise exc
        name = _ident(table.target_schema, table.target_table)
        keys = ", ".join(_ident(c) for c in table.target_key)
        where = " AND ".join(f"{_ident(c)} = %s" for c in columns)
        cur.execute(f"SELECT {keys} FROM {name} WHERE {where}", [_adapt(op.row[c]) for c in columns])
        holders = [tuple(r) for r in cur.fetchall()]
        if not holders:
            raise exc
        for holder in holders:
            cur.execute("SELECT commit_lsn, lsn FROM strangler.row_position WHERE target_table = %s AND pk = %s",
                        (table.target, _pk_json(holder)))
            pos = cur.fetchone()
            if pos is not None and (pos[0], pos[1]) > op.position:
                return False
        for holder in holders:
            cur.execute(f"DELETE FROM {name} WHERE ({keys}) = ({', '.join(['%s'] * len(holder))})", list(holder))
        return True

    def _truncate(self, cur: Any, op: _Op) -> int:
        target = op.table.target
        cur.execute(
            "SELECT commit_lsn, lsn FROM strangler.table_position WHERE name = %s AND target_table = %s",
            (self.spec.name, target),
        )
        row = cur.fetchone()
        if row is not None and (row[0], row[1]) >= op.position:
            return 0
        cur.execute(f"TRUNCATE {_ident(op.table.target_schema, op.table.target_table)}")
        cur.execute("DELETE FROM strangler.row_position WHERE target_table = %s", (target,))
        cur.execute(
            "INSERT INTO strangler.table_position (name, target_table, commit_lsn, lsn) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (name, target_table) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, lsn = EXCLUDED.lsn",
            (self.spec.name, target, op.position[0], op.position[1]),
        )
        return 1

    def _segment(self, cur: Any, ops: list[_Op]) -> int:
        if not ops:
            return 0
        by_table: dict[str, dict[tuple[Any, ...], _Op]] = {}
        applied = 0
        for op in ops:
            # The last change of a row within the batch wins (ops arrive in stream order), unless
            # ownership judges each update by its own before image and position: then the earlier
            # changes are applied first.
            latest = by_table.setdefault(op.table.target, {})
            if op.key in latest and op.event.op == "u" and self._judges_updates(cur, op.table):
                applied += self._table_groups(cur, by_table)
                by_table = {}
                latest = by_table.setdefault(op.table.target, {})
            latest[op.key] = op
        return applied + self._table_groups(cur, by_table)

    def _table_groups(self, cur: Any, by_table: dict[str, dict[tuple[Any, ...], _Op]]) -> int:
        return sum(self._table_ops(cur, target, list(latest.values())) for target, latest in by_table.items())

    def _judges_updates(self, cur: Any, table: TableSpec) -> bool:
        """Whether some update of `table` may be narrowed by ownership (in this transaction's setting)."""
        if self.spec.reverse:
            return bool(table.legacy_owned_targets)
        return self._ownership(cur).may_enforce(table)

    def _ownership(self, cur: Any) -> ownership.OwnershipPolicy:
        """The forward ownership settings, read once per target transaction."""
        if self._policy is None:
            self._policy = ownership.load_policy(cur, self.spec)
        return self._policy

    def _table_ops(self, cur: Any, target: str, ops: list[_Op]) -> int:
        table = ops[0].table
        truncated_at: Position = (0, 0)
        stored: dict[str, Position] = {}
        # In one ordered stream every stored position is at or before the checkpoint, which
        # every op here is after (older ones were skipped): the guards cannot refuse anything.
        guarded = not self.ordered or any(o.snapshot for o in ops)
        if guarded:
            cur.execute(
                "SELECT commit_lsn, lsn FROM strangler.table_position WHERE name = %s AND target_table = %s",
                (self.spec.name, target),
            )
            row = cur.fetchone()
            truncated_at = (row[0], row[1]) if row else (0, 0)
        if guarded and (target in self._streamed_tables or any(not o.snapshot for o in ops)):
            keys = [_pk_json(o.key) for o in ops]
            cur.execute(
                "SELECT pk, commit_lsn, lsn FROM strangler.row_position WHERE target_table = %s AND pk = ANY(%s)",
                (target, keys),
            )
            stored = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
        upserts: list[_Op] = []
        deletes: list[_Op] = []
        positions: list[tuple[str, str, int, int]] = []
        for op in ops:
            pk = _pk_json(op.key)
            seen = stored.get(pk)
            if op.snapshot:
                # Snapshot rows are older than any streamed change: skip if one was applied.
                if seen is not None:
                    continue
            else:
                if op.position <= truncated_at or (seen is not None and seen >= op.position):
                    continue
                positions.append((target, pk, op.position[0], op.position[1]))
            (upserts if op.kind == "upsert" else deletes).append(op)
        # Deletes first: a row deleted and another inserted with its unique values in one batch.
        self._delete(cur, table, deletes)
        if self.spec.reverse:
            self._advance_sequence(cur, table, upserts)
        if not deletes and self._insert_new(cur, table, upserts, positions):
            self._streamed_tables.add(target)
            return len(upserts)
        upserts = [self._owned(cur, table, op) for op in upserts]
        self._upsert(cur, table, upserts)
        if positions:
            upsert_positions = (
                "ON CONFLICT (target_table, pk) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, lsn = EXCLUDED.lsn"
            )
            if len(positions) >= _COPY_THRESHOLD:
                self._stage(cur, "strangler_pos_stage", "strangler.row_position", _POSITION_COLUMNS, positions)
                cur.execute(
                    "INSERT INTO strangler.row_position (target_table, pk, commit_lsn, lsn) "
                    f"SELECT target_table, pk, commit_lsn, lsn FROM strangler_pos_stage {upsert_positions}"
                )
            else:
                psycopg2.extras.execute_values(
                    cur,
                    f"INSERT INTO strangler.row_position (target_table, pk, commit_lsn, lsn) VALUES %s {upsert_positions}",
                    positions,
                    page_size=1000,
                )
            self._streamed_tables.add(target)
        return len(upserts) + len(deletes)

    def _insert_new(self, cur: Any, table: TableSpec, ops: list[_Op], positions: list[tuple[str, str, int, int]]) -> bool:
        """Streamed inserts COPYed straight into the table and the row guards; True if they went in.

        An insert normally creates its row, and the upsert's staging table and ON CONFLICT are then
        wasted work. Should a row or its guard exist already (a key inserted again after a delete,
        a redelivery), the COPY fails and is undone, and the caller upserts instead.
        """
        if len(ops) < _COPY_THRESHOLD or len(positions) != len(ops):
            return False
        cols = tuple(ops[0].row or ())
        rows = []
        for op in ops:
            row = op.row
            if op.event.op != "c" or op.snapshot or row is None or tuple(row) != cols or UNAVAILABLE in row.values():
                return False
            rows.append(tuple(row.values()))
        cur.execute("SAVEPOINT strangler_insert")
        try:
            _copy(cur, _ident(table.target_schema, table.target_table), cols, rows)
            _copy(cur, "strangler.row_position", _POSITION_COLUMNS, positions)
        except psycopg2.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT strangler_insert")
            return False
        cur.execute("RELEASE SAVEPOINT strangler_insert")
        return True

    def _guarded(self, cur: Any, table: TableSpec, op: _Op) -> tuple[str, ...]:
        """Target columns a streamed update must not write: the other side owns them."""
        if self.spec.reverse:
            return table.legacy_owned_targets
        return self._ownership(cur).owned(table, op.position[0])

    def _owned(self, cur: Any, table: TableSpec, op: _Op) -> _Op:
        """A streamed update narrowed to the columns its source owns; its conflicts recorded."""
        row = op.row
        if op.event.op != "u" or op.snapshot or row is None:
            return op
        guarded = self._guarded(cur, table, op)
        owned = [c for c in guarded if c in row and row[c] is not UNAVAILABLE]
        if not owned:
            return op
        types = self._types_of(cur, table)
        name = _ident(table.target_schema, table.target_table)
        where = " AND ".join(f"{_ident(c)} = %s" for c in table.target_key)
        probes = ", ".join(f"to_jsonb({_ident(c)}), {_ident(c)} IS DISTINCT FROM %s::{types[c]}" for c in owned)
        cur.execute(f"SELECT {probes} FROM {name} WHERE {where}", [*(_adapt(row[c]) for c in owned), *op.key])
        current = cur.fetchone()
        if current is None:
            return op  # a row new to the service: created whole
        before = self._before(table, op.event)
        found: dict[str, dict[str, Any]] = {}
        # The incoming value is the legacy side's in the forward stream, the service's in the reverse.
        incoming, current_side = ("service", "legacy") if self.spec.reverse else ("legacy", "service")
        for i, column in enumerate(owned):
            target_value, differs = current[2 * i], current[2 * i + 1]
            source_changed = before is None or _text(before.get(column)) != _text(row[column])
            if differs and source_changed:
                found[column] = {incoming: self._plain(table, op, column), current_side: target_value}
        if found:
            conflicts.insert(cur, self.spec.name, table.target, op.key, found, op.position, op.event.source.ts_ms)
        narrowed = {c: (UNAVAILABLE if c in guarded else v) for c, v in row.items()}
        return _Op(op.kind, table, op.key, narrowed, op.position, op.snapshot, op.event)

    def _plain(self, table: TableSpec, op: _Op, column: str) -> Any:
        """An update's mapped value as a Python value (a copied column may hold the server's text)."""
        value = op.row[column]  # type: ignore[index]
        spec = next(c for c in table.columns if c.target == column)
        if isinstance(value, str) and op.event.after is not None and spec.transform is None and spec.function is None \
                and table.function is None:
            return op.event.after.get(spec.source, value)
        return value

    def _advance_sequence(self, cur: Any, table: TableSpec, ops: list[_Op]) -> None:
        """Move the target key's sequence (if it has one) past the highest key these ops write."""
        if not ops or len(table.target_key) != 1:
            return
        if table.target not in self._sequences:
            cur.execute("SELECT pg_get_serial_sequence(%s, %s)",
                        (_ident(table.target_schema, table.target_table), table.target_key[0]))
            self._sequences[table.target] = cur.fetchone()[0]
        sequence = self._sequences[table.target]
        keys = [op.key[0] for op in ops]
        if sequence is None or not all(isinstance(k, int) for k in keys):
            return
        # GREATEST: never back, past ids the monolith took itself (NULL: the sequence was never used).
        cur.execute("SELECT setval(%s::regclass, GREATEST(%s, COALESCE(pg_sequence_last_value(%s::regclass), 0)))",
                    (sequence, max(keys), sequence))

    def _before(self, table: TableSpec, event: ChangeEvent) -> dict[str, Any] | None:
        """The mapped before image of an update, when the source sent a full one."""
        if not event.before or any(c not in event.before for c in table.source_columns):
            return None
        try:
            return self.mappers[table.source].map(event.before, raw_text=True)
        except CDCError:
            return None

    def _types_of(self, cur: Any, table: TableSpec) -> dict[str, str]:
        types = self._column_types.get(table.target)
        if types is None:
            cur.execute(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                (_ident(table.target_schema, table.target_table),),
            )
            types = self._column_types[table.target] = dict(cur.fetchall())
        return types

    def _upsert(self, cur: Any, table: TableSpec, ops: list[_Op]) -> None:
        if not ops:
            return
        name = _ident(table.target_schema, table.target_table)
        key_cols = table.target_key
        groups: dict[tuple[str, ...], list[_Op]] = {}
        partial: list[_Op] = []
        for op in ops:
            assert op.row is not None
            if any(v is UNAVAILABLE for v in op.row.values()):
                partial.append(op)
            else:
                groups.setdefault(tuple(op.row), []).append(op)
        for cols, group in groups.items():
            updates = [c for c in cols if c not in key_cols]
            conflict = ", ".join(_ident(c) for c in key_cols)
            action = (
                "DO UPDATE SET " + ", ".join(f"{_ident(c)} = EXCLUDED.{_ident(c)}" for c in updates)
                if updates else "DO NOTHING"
            )
            col_list = ", ".join(_ident(c) for c in cols)
            if len(group) >= _COPY_THRESHOLD:
                stage = f"strangler_stage_{table.target_schema}_{table.target_table}"
                self._stage(cur, stage, name, cols, [tuple(op.row.values()) for op in group])  # type: ignore[union-attr]
                cur.execute(f"INSERT INTO {name} ({col_list}) SELECT {col_list} FROM {_ident(stage)} "
                            f"ON CONFLICT ({conflict}) {action}")
            else:
                sql = f"INSERT INTO {name} ({col_list}) VALUES %s ON CONFLICT ({conflict}) {action}"
                rows = [tuple(_adapt(v) for v in op.row.values()) for op in group]  # type: ignore[union-attr]
                psycopg2.extras.execute_values(cur, sql, rows, page_size=1000)
        for op in partial:
            assert op.row is not None
            present = {c: v for c, v in op.row.items() if v is not UNAVAILABLE and c not in key_cols}
            missing = sorted(c for c, v in op.row.items() if v is UNAVAILABLE)
            where = " AND ".join(f"{_ident(c)} = %s" for c in key_cols)
            if present:
                sets = ", ".join(f"{_ident(c)} = %s" for c in present)
                cur.execute(f"UPDATE {name} SET {sets} WHERE {where}", [*(_adapt(v) for v in present.values()), *op.key])
            else:
                cur.execute(f"SELECT 1 FROM {name} WHERE {where}", list(op.key))
            if cur.rowcount == 0:
                raise _RowMissing(
                    f"row {op.key} of {table.target} does not exist and the change does not carry "
                    f"column(s) {', '.join(missing)} (unchanged TOAST values); it cannot be created from this event"
                )

    def _stage(self, cur: Any, stage: str, like: str, cols: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        """COPY rows into a session temp table shaped like `like` (emptied at each commit)."""
        # One round trip; survives rollbacks (which would drop a table created in the same transaction).
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_ident(stage)} (LIKE {like}) ON COMMIT DELETE ROWS; "
                    f"DELETE FROM {_ident(stage)}")
        _copy(cur, _ident(stage), cols, rows)

    def _delete(self, cur: Any, table: TableSpec, ops: list[_Op]) -> None:
        if not ops:
            return
        name = _ident(table.target_schema, table.target_table)
        cols = ", ".join(_ident(c) for c in table.target_key)
        psycopg2.extras.execute_values(
            cur, f"DELETE FROM {name} WHERE ({cols}) IN (VALUES %s)", [op.key for op in ops], page_size=1000
        )

    # -- snapshot fast path --------------------------------------------------------------------------

    def copy_rows(
        self,
        table: TableSpec,
        rows: Iterable[Mapping[str, Any]],
        *,
        snapshot: Mapping[str, Any],
        position: Position,
    ) -> int:
        """Bulk-load mapped snapshot rows with COPY, with the checkpoint, in one transaction.

        Used while the service table has no streamed rows yet (the initial snapshot): rows go
        straight in with COPY; should a key already exist (a resumed chunk), the chunk is
        re-loaded through a temporary table and upserted instead.
        """
        buf = io.StringIO()
        cols: tuple[str, ...] | None = None
        n = 0
        for row in rows:
            if cols is None:
                cols = tuple(row)
            buf.write("\t".join(_copy_text(row[c]) for c in cols))
            buf.write("\n")
            n += 1
        conn = self.conn
        name = _ident(table.target_schema, table.target_table)
        try:
            with conn.cursor() as cur:
                if cols:
                    col_list = ", ".join(_ident(c) for c in cols)
                    cur.execute("SAVEPOINT strangler_copy")
                    buf.seek(0)
                    try:
                        cur.copy_expert(f"COPY {name} ({col_list}) FROM STDIN", buf, size=_COPY_CHUNK)
                        cur.execute("RELEASE SAVEPOINT strangler_copy")
                    except psycopg2.errors.UniqueViolation:
                        cur.execute("ROLLBACK TO SAVEPOINT strangler_copy")
                        buf.seek(0)
                        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS strangler_load (LIKE {name}) ON COMMIT DELETE ROWS")
                        cur.copy_expert(f"COPY strangler_load ({col_list}) FROM STDIN", buf, size=_COPY_CHUNK)
                        updates = [c for c in cols if c not in table.target_key]
                        cur.execute(
                            f"INSERT INTO {name} ({col_list}) SELECT {col_list} FROM strangler_load "
                            f"ON CONFLICT ({', '.join(_ident(c) for c in table.target_key)}) DO UPDATE SET "
                            + ", ".join(f"{_ident(c)} = EXCLUDED.{_ident(c)}" for c in updates)
                        )
                cur.execute(
                    "INSERT INTO strangler.checkpoint (name, commit_lsn, lsn, snapshot, updated_at, in_process) "
                    "VALUES (%s, %s, %s, %s::jsonb, now(), %s) ON CONFLICT (name) DO UPDATE SET "
                    "commit_lsn = EXCLUDED.commit_lsn, lsn = EXCLUDED.lsn, snapshot = EXCLUDED.snapshot, updated_at = now(), "
                    "in_process = EXCLUDED.in_process",
                    (self.spec.name, position[0], position[1], json.dumps(dict(snapshot), default=str), self.in_process),
                )
            conn.commit()
        except psycopg2.Error as exc:
            conn.rollback()
            raise ApplyError(f"loading snapshot rows into {table.target} failed: {str(exc).strip()}") from exc
        self._checkpoint = Checkpoint(position=position, snapshot=dict(snapshot), source_ts_ms=self._checkpoint.source_ts_ms,
                                      in_process=self.in_process)
        return n

    def reset_targets(self, snapshot: Mapping[str, Any]) -> None:
        """Before a fresh snapshot: empty the service tables and this spec's row guards."""
        targets = [t.target for t in self.spec.tables]
        try:
            with self.conn.cursor() as cur:
                names = ", ".join(_ident(t.target_schema, t.target_table) for t in self.spec.tables)
                cur.execute(f"TRUNCATE {names}")
                cur.execute("DELETE FROM strangler.row_position WHERE target_table = ANY(%s)", (targets,))
                cur.execute("DELETE FROM strangler.table_position WHERE name = %s", (self.spec.name,))
            self._streamed_tables.difference_update(targets)
        except psycopg2.Error as exc:
            self.conn.rollback()
            raise ApplyError(f"cannot empty the service tables for a fresh snapshot: {str(exc).strip()}") from exc
        self._checkpoint = Checkpoint()
        self.commit_snapshot_state(snapshot)

    def commit_snapshot_state(self, snapshot: Mapping[str, Any]) -> None:
        """Commit the open target transaction (rows loaded in it) with the snapshot's progress."""
        position = (int(snapshot.get("consistent_point", 0)), 0)
        self._run([], [], ApplyResult(), position, snapshot)

    def save_checkpoint(self, *, position: Position, snapshot: Mapping[str, Any], source_ts_ms: int = 0) -> None:
        """Record the position and snapshot state (e.g. the snapshot's start) on its own.

        `source_ts_ms`: the source time reached (a heartbeat's), when later than the checkpoint's.
        """
        self._run([], [], ApplyResult(), position, snapshot, source_ts_ms)


_POSITION_COLUMNS = ("target_table", "pk", "commit_lsn", "lsn")
# psycopg2 sends COPY data in chunks of this many characters, releasing the GIL around each: with
# the capture thread busy, taking it back costs up to a switch interval (5 ms) per chunk.
_COPY_CHUNK = 1 << 20


def _copy(cur: Any, name: str, cols: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """COPY rows of Python values (or the source's text) into the table `name` (quoted)."""
    buf = io.StringIO()
    fmt = _COPY_BY_TYPE.get
    buf.writelines("\t".join([(fmt(type(v)) or _copy_text)(v) for v in row]) + "\n" for row in rows)
    buf.seek(0)
    cur.copy_expert(f"COPY {name} ({', '.join(_ident(c) for c in cols)}) FROM STDIN", buf, size=_COPY_CHUNK)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_str(value: str) -> str:
    return value.translate(_COPY_ESCAPES) if ("\\" in value or "\t" in value or "\n" in value or "\r" in value) else value


def _copy_json(value: Any) -> str:
    return _copy_str(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


_COPY_BY_TYPE: dict[type, Callable[[Any], str]] = {
    str: _copy_str,
    int: int.__repr__,
    bool: lambda v: "t" if v else "f",
    type(None): lambda v: "\\N",
    dict: _copy_json,
    list: _copy_json,
}


def _text(value: Any) -> str | None:
    """A mapped value as comparable text (raw server text and Python values alike)."""
    return None if value is None else _copy_text(value)


def _copy_text(value: Any) -> str:
    """A value in COPY's text format."""
    fn = _COPY_BY_TYPE.get(type(value))
    if fn is not None:
        return fn(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\\\x" + bytes(value).hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, str):
        return _copy_str(value)
    return str(value)


def ensure_schema(conn: Any) -> None:
    """Create the applier's bookkeeping tables in the target (idempotent)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT to_regclass('strangler.dead_letter') IS NOT NULL AND to_regclass('strangler.table_position') IS NOT NULL "
            "AND to_regclass('strangler.conflict') IS NOT NULL AND to_regclass('strangler.ownership') IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('strangler.checkpoint') "
            "AND attname = 'in_process')"
        )
        if not cur.fetchone()[0]:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('strangler.ddl'))")
            cur.execute(DDL)
    conn.commit()


def load_checkpoint(conn: Any, name: str) -> Checkpoint:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('strangler.checkpoint') IS NOT NULL")
        if not cur.fetchone()[0]:
            conn.rollback()
            return Checkpoint()
        # in_process through to_jsonb: a target whose applier predates the column still reads.
        cur.execute(
            "SELECT commit_lsn, lsn, snapshot, source_ts_ms, to_jsonb(c) -> 'in_process' FROM strangler.checkpoint c "
            "WHERE name = %s",
            (name,),
        )
        row = cur.fetchone()
    conn.rollback()
    if row is None:
        return Checkpoint()
    return Checkpoint(position=(int(row[0]), int(row[1])), snapshot=row[2] or {}, source_ts_ms=int(row[3]),
                      in_process=row[4] is not False)
