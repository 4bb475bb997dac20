"""The cutover journal: every decision and change, written before it is acted on, and the lease.

Two tables in the plan's database (schema `strangler`): `cutover_journal`, one row per entry
(kind, step, weight, config version, file hash, and the readings or action as JSON), and
`cutover_lease`, one row per plan naming the runner allowed to act until `expires_at`. Every
entry a runner writes renews its lease in the same transaction and fails when the lease is no
longer its own, so two runners cannot both act. Operator requests (`pause`, `approve`, `abort`,
...) are entries too, written without the lease; the runner acts on them. `status` reads only
this table. `MemoryJournal` is the dry run's: it starts from the real entries and writes nothing.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import psycopg2
import psycopg2.extras

from cutover.exceptions import CutoverError, LeaseHeld

if TYPE_CHECKING:
    from cutover.plan import Plan

__all__ = ["Entry", "JournalStore", "MemoryJournal", "PostgresJournal", "journal_url", "new_holder", "open_journal"]

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS strangler;
CREATE TABLE IF NOT EXISTS strangler.cutover_journal (
    id bigserial PRIMARY KEY,
    plan text NOT NULL,
    at double precision NOT NULL,
    kind text NOT NULL,
    step integer,
    weight double precision,
    config_version text,
    file_hash text,
    holder text,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS cutover_journal_plan ON strangler.cutover_journal (plan, id);
CREATE TABLE IF NOT EXISTS strangler.cutover_lease (
    plan text PRIMARY KEY,
    holder text NOT NULL,
    expires_at double precision NOT NULL
);
"""


@dataclass(frozen=True)
class Entry:
    """One journal row."""

    id: int
    at: float
    kind: str
    step: int | None = None
    weight: float | None = None
    config_version: str | None = None
    file_hash: str | None = None
    holder: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "at": self.at, "kind": self.kind, "step": self.step, "weight": self.weight,
            "config_version": self.config_version, "file_hash": self.file_hash, "holder": self.holder,
            "detail": self.detail,
        }


def new_holder() -> str:
    """A lease holder id: host, pid and a nonce (`host:pid:nonce`)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _dead_here(holder: str) -> bool:
    """Whether `holder` is a process on this host that no longer exists (its lease can be taken)."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class JournalStore(Protocol):
    """What the runner needs of a journal."""

    def entries(self) -> list[Entry]: ...

    def write(self, kind: str, **fields: Any) -> Entry: ...

    def write_many(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Entry]:
        """Append (kind, fields) entries in one transaction: all or none."""


class PostgresJournal:
    """The journal and the lease in PostgreSQL (psycopg2)."""

    def __init__(self, url: str, plan: str, *, lease: float = 30.0, clock: Any = time.time, create: bool = True) -> None:
        self.url = url
        self.plan = plan
        self.lease = lease
        self.clock = clock
        self.holder: str | None = None
        self._renewed = 0.0
        try:
            self.conn = psycopg2.connect(url)
        except psycopg2.Error as exc:
            raise CutoverError(
                f"cannot connect to the journal database: {str(exc).strip()}; check journal.database_url in the plan "
                "(or the sync spec's target database)"
            ) from exc
        try:
            with self.conn, self.conn.cursor() as cur:
                if create:
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext('strangler.cutover_journal'))")
                    cur.execute(_SCHEMA)
                cur.execute("SELECT to_regclass('strangler.cutover_journal') IS NOT NULL")
                self.exists = bool(cur.fetchone()[0])
        except psycopg2.Error as exc:
            self.conn.close()
            raise CutoverError(f"cannot create the journal tables: {str(exc).strip()}") from exc

    def close(self) -> None:
        self.conn.close()

    def entries(self, since_id: int = 0) -> list[Entry]:
        if not self.exists:
            return []
        try:
            with self.conn, self.conn.cursor() as cur:
                cur.execute(
                    "SELECT id, at, kind, step, weight, config_version, file_hash, holder, detail "
                    "FROM strangler.cutover_journal WHERE plan = %s AND id > %s ORDER BY id",
                    (self.plan, since_id),
                )
                rows = cur.fetchall()
        except psycopg2.Error as exc:
            raise CutoverError(f"cannot read the journal: {str(exc).strip()}") from exc
        return [Entry(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], dict(row[8] or {})) for row in rows]

    def lease_holder(self) -> tuple[str, float] | None:
        if not self.exists:
            return None
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT holder, expires_at FROM strangler.cutover_lease WHERE plan = %s", (self.plan,))
            row = cur.fetchone()
        return (row[0], row[1]) if row else None

    def acquire(self, holder: str) -> None:
        """Take the plan's lease, or raise `LeaseHeld` naming the runner that holds it."""
        now = self.clock()
        try:
            with self.conn, self.conn.cursor() as cur:
                cur.execute("SELECT holder, expires_at FROM strangler.cutover_lease WHERE plan = %s FOR UPDATE", (self.plan,))
                row = cur.fetchone()
                if row is None:
                    cur.execute(
                        "INSERT INTO strangler.cutover_lease (plan, holder, expires_at) VALUES (%s, %s, %s)",
                        (self.plan, holder, now + self.lease),
                    )
                elif row[0] == holder or row[1] < now or _dead_here(row[0]):
                    cur.execute(
                        "UPDATE strangler.cutover_lease SET holder = %s, expires_at = %s WHERE plan = %s",
                        (holder, now + self.lease, self.plan),
                    )
                else:
                    raise LeaseHeld(
                        f"another runner ({row[0]}) holds the lease of plan {self.plan!r} for {row[1] - now:.0f}s more; "
                        "let it finish, or stop it (its lease then runs out) and run again"
                    )
        except psycopg2.IntegrityError as exc:
            raise LeaseHeld(f"another runner took the lease of plan {self.plan!r} at the same moment; run again") from exc
        except psycopg2.Error as exc:
            raise CutoverError(f"cannot take the lease in the journal database: {str(exc).strip()}") from exc
        self.holder = holder

    def release(self) -> None:
        if self.holder is None:
            return
        try:
            with self.conn, self.conn.cursor() as cur:
                cur.execute("DELETE FROM strangler.cutover_lease WHERE plan = %s AND holder = %s", (self.plan, self.holder))
        except psycopg2.Error:
            pass
        self.holder = None

    def _renew(self, cur: Any) -> None:
        self._renewed = self.clock()
        cur.execute(
            "UPDATE strangler.cutover_lease SET expires_at = %s WHERE plan = %s AND holder = %s",
            (self.clock() + self.lease, self.plan, self.holder),
        )
        if cur.rowcount != 1:
            raise LeaseHeld(
                f"this runner ({self.holder}) lost the lease of plan {self.plan!r} (it ran out or another runner took it); "
                "it stops without acting"
            )

    def renew_if_due(self) -> None:
        """Renew once a third of the lease has passed since the last renewal (cheap to call often)."""
        if self.holder is not None and self.clock() - self._renewed > self.lease / 3:
            self.renew()

    def renew(self) -> None:
        try:
            with self.conn, self.conn.cursor() as cur:
                self._renew(cur)
        except psycopg2.Error as exc:
            raise CutoverError(f"cannot renew the lease: {str(exc).strip()}") from exc

    def write(self, kind: str, **fields: Any) -> Entry:
        """Append an entry; a runner's entry (it holds the lease) renews the lease in the same transaction."""
        return self.write_many([(kind, fields)])[0]

    def write_many(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Entry]:
        """Append entries in one transaction (one commit to wait for), renewing the lease with them."""
        at = self.clock()
        rows = []
        for kind, given in entries:
            fields = dict(given)
            detail = fields.pop("detail", {}) or {}
            rows.append((kind, fields, detail))
        try:
            with self.conn, self.conn.cursor() as cur:
                if self.holder is not None:
                    self._renew(cur)
                ids = psycopg2.extras.execute_values(
                    cur,
                    "INSERT INTO strangler.cutover_journal (plan, at, kind, step, weight, config_version, file_hash, holder, detail) "
                    "VALUES %s RETURNING id",
                    [(self.plan, at, kind, fields.get("step"), fields.get("weight"), fields.get("config_version"),
                      fields.get("file_hash"), self.holder, psycopg2.extras.Json(detail, dumps=_dumps))
                     for kind, fields, detail in rows],
                    fetch=True,
                )
        except psycopg2.Error as exc:
            raise CutoverError(f"cannot write to the journal: {str(exc).strip()}") from exc
        return [Entry(row[0], at, kind, fields.get("step"), fields.get("weight"), fields.get("config_version"),
                      fields.get("file_hash"), self.holder, detail) for row, (kind, fields, detail) in zip(ids, rows)]

def _finite(value: Any) -> Any:
    """JSON as PostgreSQL takes it: infinities (a histogram's +Inf bound) become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_finite(value), default=str)


class MemoryJournal:
    """The dry run's journal: the real entries to start from, new ones kept in memory only."""

    def __init__(self, entries: Sequence[Entry], *, clock: Any = time.time) -> None:
        self._entries = list(entries)
        self.written: list[Entry] = []
        self.clock = clock

    def entries(self) -> list[Entry]:
        return list(self._entries)

    def write(self, kind: str, **fields: Any) -> Entry:
        detail = json.loads(_dumps(fields.pop("detail", {}) or {}))
        next_id = (self._entries[-1].id if self._entries else 0) + 1
        entry = Entry(next_id, self.clock(), kind, fields.get("step"), fields.get("weight"), fields.get("config_version"),
                      fields.get("file_hash"), "dry-run", detail)
        self._entries.append(entry)
        self.written.append(entry)
        return entry

    def write_many(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Entry]:
        return [self.write(kind, **dict(fields)) for kind, fields in entries]

    def renew(self) -> None:
        return None


def journal_url(plan: Plan, env: Mapping[str, str] | None = None) -> str:
    """The journal's database: `journal.database_url`, else the sync spec's target database."""
    if plan.journal.database_url:
        return plan.journal.database_url
    if plan.sync:
        from cdc.exceptions import CDCError
        from cdc.spec import load_spec

        try:
            spec = load_spec(plan.sync, env=os.environ if env is None else env)
        except CDCError as exc:
            raise CutoverError(f"the plan's sync spec does not load: {exc}") from exc
        if spec.target_url:
            return spec.target_url
    raise CutoverError(
        "the plan names no journal database: set journal.database_url, or a sync spec (sync:) with a target database url"
    )


def open_journal(plan: Plan, env: Mapping[str, str] | None = None, *, create: bool = True) -> PostgresJournal:
    """The plan's journal; with `create=False` (dry run, status, plan) its tables are not created."""
    return PostgresJournal(journal_url(plan, env), plan.name, lease=plan.journal.lease, create=create)
