"""The publication and the logical replication slot a capture owns.

Names derive from the sync spec's name (`strangler_<service>`). The slot is created over a
replication connection with an exported snapshot; the connection stays open for as long as the
`create_slot` context is, because the snapshot lives only that long.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from cdc.database import connect
from cdc.events import Column
from cdc.exceptions import CDCError
from cdc.replication import ReplicationError, open_replication_connection, parse_lsn
from common.waiting import TimedOut, wait_until

__all__ = [
    "CreatedSlot",
    "MissingPrimaryKeyError",
    "SlotState",
    "TableInfo",
    "UnknownTableError",
    "create_slot",
    "describe_tables",
    "drop_publication",
    "drop_slot",
    "ensure_publication",
    "exported_snapshot",
    "publication_exists",
    "publication_name",
    "slot_name",
    "slot_state",
    "wait_released",
]

_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


class MissingPrimaryKeyError(CDCError):
    """A published table has neither a primary key nor REPLICA IDENTITY FULL."""


class UnknownTableError(CDCError):
    """A table named in the spec does not exist in the source database."""


def slot_name(service: str) -> str:
    """The replication slot of a sync spec: `strangler_<service>` in slot-name characters."""
    name = "strangler_" + re.sub(r"[^a-z0-9_]", "_", service.lower())
    return name[:63]


def publication_name(service: str) -> str:
    return slot_name(service)


def _check_slot_name(name: str) -> str:
    if not _NAME.match(name):
        raise CDCError(f"slot name {name!r} is invalid; use 1-63 lower-case letters, digits or underscores")
    return name


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A source table: its OID, key columns (primary key, or every column with REPLICA IDENTITY FULL)."""

    oid: int
    schema: str
    name: str
    replica_identity: str
    key_columns: tuple[str, ...]
    columns: tuple[Column, ...]
    column_oids: tuple[int, ...]
    has_primary_key: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


def _split(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return (schema or "public", name)


_DESCRIBE = """
SELECT c.oid, c.relreplident,
       COALESCE((SELECT array_agg(a.attname::text ORDER BY k.ord)
                 FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                 WHERE i.indrelid = c.oid AND i.indisprimary), '{}') AS pk
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
"""

_COLUMNS = """
SELECT a.attname::text, a.atttypid::int, t.typname::text, a.attnotnull
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def describe_tables(conn: psycopg2.extensions.connection, tables: Sequence[str]) -> list[TableInfo]:
    """Look the tables up; every one must exist and have a primary key or REPLICA IDENTITY FULL."""
    infos = []
    with conn.cursor() as cur:
        for table in tables:
            schema, name = _split(table)
            cur.execute(_DESCRIBE, (schema, name))
            row = cur.fetchone()
            if row is None:
                raise UnknownTableError(
                    f"source table {table!r} does not exist (looked for {schema}.{name}); "
                    "check the table name in the sync spec"
                )
            oid, identity, pk = row
            cur.execute(_COLUMNS, (oid,))
            described = cur.fetchall()
            if not pk and identity != "f":
                raise MissingPrimaryKeyError(
                    f"source table {schema}.{name} has no primary key, so its rows cannot be keyed; "
                    f"add one (ALTER TABLE {schema}.{name} ADD PRIMARY KEY (...)) or set "
                    f"ALTER TABLE {schema}.{name} REPLICA IDENTITY FULL"
                )
            keys = tuple(pk) if pk else tuple(col for col, _, _, _ in described)
            columns = tuple(
                Column(col, type_name, optional=not not_null, key=col in keys)
                for col, _, type_name, not_null in described
            )
            infos.append(TableInfo(
                oid=oid, schema=schema, name=name, replica_identity=identity, key_columns=keys,
                columns=columns, column_oids=tuple(type_oid for _, type_oid, _, _ in described),
                has_primary_key=bool(pk),
            ))
    return infos


def publication_exists(dsn: str, publication: str) -> bool:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def ensure_publication(dsn: str, publication: str, tables: Sequence[str]) -> list[TableInfo]:
    """Create the publication FOR TABLE the given tables, or set its table list if it exists."""
    conn = connect(dsn)
    try:
        conn.autocommit = True
        infos = describe_tables(conn, tables)
        names = sql.SQL(", ").join(sql.Identifier(i.schema, i.name) for i in infos)
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(publication), names))
            else:
                cur.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(publication), names))
        return infos
    except psycopg2.Error as exc:
        raise CDCError(f"cannot create publication {publication!r}: {str(exc).strip()}") from exc
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class CreatedSlot:
    """A slot just created: stream from `consistent_point`; copy tables in `snapshot_name`."""

    name: str
    consistent_point: int
    snapshot_name: str


@contextmanager
def create_slot(dsn: str, name: str, *, temporary: bool = False) -> Iterator[CreatedSlot]:
    """Create a pgoutput slot with an exported snapshot, usable while the context is open."""
    _check_slot_name(name)
    conn = open_replication_connection(dsn)
    try:
        with conn.cursor() as cur:
            kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
            try:
                cur.execute(f"CREATE_REPLICATION_SLOT {name} {kind} pgoutput (SNAPSHOT 'export')")
            except psycopg2.errors.DuplicateObject as exc:
                raise ReplicationError(
                    f"replication slot {name!r} already exists; resume streaming from it, or drop it "
                    "first (strangler cdc drop) to start over with a new snapshot"
                ) from exc
            except psycopg2.Error as exc:
                raise ReplicationError(f"cannot create replication slot {name!r}: {str(exc).strip()}") from exc
            row = cur.fetchone()
        assert row is not None
        yield CreatedSlot(name=row[0], consistent_point=parse_lsn(row[1]), snapshot_name=row[2])
    finally:
        conn.close()


@contextmanager
def exported_snapshot(dsn: str, name: str) -> Iterator[CreatedSlot]:
    """A fresh snapshot with its exact LSN, through a temporary slot (gone when the context ends).

    Used to resume an interrupted snapshot: rows copied now are positioned at this LSN, so the
    main slot's stream (from its older consistent point) only changes them when newer.
    """
    with create_slot(dsn, name, temporary=True) as created:
        yield created


@dataclass(frozen=True, slots=True)
class SlotState:
    """What the server says about a slot."""

    name: str
    active: bool
    confirmed_flush_lsn: int | None
    restart_lsn: int | None
    current_lsn: int
    wal_status: str | None

    @property
    def retained_bytes(self) -> int:
        return self.current_lsn - self.restart_lsn if self.restart_lsn is not None else 0

    @property
    def lag_bytes(self) -> int:
        return self.current_lsn - self.confirmed_flush_lsn if self.confirmed_flush_lsn is not None else 0


def slot_state(dsn: str, name: str, *, conn: Any = None) -> SlotState | None:
    """The slot's state (None when it does not exist); `conn`: an open autocommit connection to use."""
    own = conn is None
    if own:
        conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT slot_name::text, active, confirmed_flush_lsn::text, restart_lsn::text, "
                "pg_current_wal_lsn()::text, wal_status FROM pg_replication_slots WHERE slot_name = %s",
                (name,),
            )
            row = cur.fetchone()
    finally:
        if own:
            conn.close()
    if row is None:
        return None
    return SlotState(
        name=row[0], active=row[1],
        confirmed_flush_lsn=parse_lsn(row[2]) if row[2] else None,
        restart_lsn=parse_lsn(row[3]) if row[3] else None,
        current_lsn=parse_lsn(row[4]), wal_status=row[5],
    )


def wait_released(dsn: str, name: str, timeout: float) -> SlotState | None:
    """Wait until no process streams from the slot (a closed connection's walsender exits a
    moment later); the slot's state then (None when it does not exist). Raises CDCError after
    `timeout` seconds."""
    try:
        [state] = wait_until(lambda: [s] if (s := slot_state(dsn, name)) is None or not s.active else [],
                             timeout, 0.1, what=f"replication slot {name} to be released")
    except TimedOut as exc:
        raise CDCError(
            f"replication slot {name} is in use by another process; stop the other `cdc run` first"
        ) from exc
    return state


def drop_slot(dsn: str, name: str, *, terminate: bool = False) -> bool:
    """Drop the slot; True when it existed. An active slot is only dropped with terminate=True."""
    conn = connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,))
            row = cur.fetchone()
            if row is None:
                return False
            if row[0] is not None:
                if not terminate:
                    raise CDCError(
                        f"replication slot {name!r} is in use by process {row[0]}; stop the capture "
                        "first, or drop with terminate=True to disconnect it"
                    )
                cur.execute("SELECT pg_terminate_backend(%s)", (row[0],))

                def released() -> str:
                    cur.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (name,))
                    row = cur.fetchone()
                    return "gone" if row is None else ("free" if row[0] is None else "")

                try:
                    if wait_until(released, 10, what=f"replication slot {name!r} to be released") == "gone":
                        return False
                except TimedOut:
                    pass  # dropping it then names the process that still holds it
            cur.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            return True
    except psycopg2.errors.UndefinedObject:
        return False
    except psycopg2.Error as exc:
        raise CDCError(f"cannot drop replication slot {name!r}: {str(exc).strip()}") from exc
    finally:
        conn.close()


def drop_publication(dsn: str, name: str) -> bool:
    """Drop the publication; True when it existed."""
    conn = connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
            if cur.fetchone() is None:
                return False
            cur.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
            return True
    except psycopg2.Error as exc:
        raise CDCError(f"cannot drop publication {name!r}: {str(exc).strip()}") from exc
    finally:
        conn.close()
