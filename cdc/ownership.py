"""Column ownership by source position: which columns the service owns from which fence on.

The write cutover switches ownership in a forward applier that is already running (another
process) and must not restart: it records a row in the target's `strangler.ownership`

    strangler.ownership(id, name, from_lsn, enforced, owned jsonb, note, applied_lsn, recorded_at)

saying that source transactions committing after `from_lsn` (a fence, `cdc.fence.emit_fence`)
are applied with ownership enforced or off, and with which service-owned columns per service
table (`owned`; NULL: the spec's own `owned_by_service`). For each transaction it applies the
applier takes the latest row with `from_lsn < commit_lsn` (by `from_lsn`, then `id`); with no
such row the spec's own `ownership:` decides. The rows are read in the apply transaction, once
per batch that has updates, after locking the spec's checkpoint row; `set_ownership` takes the
same lock, so once it returns every batch the applier commits after reads the new row.
`applied_lsn` records where the applier was when the row was written: transactions between
`from_lsn` and it were applied before the row existed, under the earlier setting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2

from cdc.database import connect, one_line
from cdc.exceptions import CDCError
from cdc.spec import SyncSpec, TableSpec

__all__ = ["DDL", "OwnershipPolicy", "load_policy", "ownership_state", "probe_ownership", "set_ownership"]

DDL = """
CREATE SCHEMA IF NOT EXISTS strangler;
CREATE TABLE IF NOT EXISTS strangler.ownership (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    from_lsn bigint NOT NULL,
    enforced boolean NOT NULL,
    owned jsonb,
    note text NOT NULL DEFAULT '',
    applied_lsn bigint NOT NULL DEFAULT 0,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ownership_name_from_lsn ON strangler.ownership (name, from_lsn, id);
"""


@dataclass(frozen=True, slots=True)
class _Setting:
    from_lsn: int
    enforced: bool
    owned: dict[str, tuple[str, ...]] | None


class OwnershipPolicy:
    """The ownership rows of one spec, read in one apply transaction; pure lookups after that.

    `owned(table, commit_lsn)`: the service columns whose legacy changes a transaction
    committing at `commit_lsn` must not write (empty: every column flows)."""

    def __init__(self, spec: SyncSpec, rows: Sequence[tuple[int, bool, Any]]) -> None:
        self.spec = spec
        self._settings = [_Setting(int(lsn), bool(enforced), _resolve(spec, owned)) for lsn, enforced, owned in rows]
        self._settings.sort(key=lambda s: s.from_lsn)  # stable: rows arrive ordered by id within a position

    def setting_at(self, commit_lsn: int) -> _Setting | None:
        found = None
        for setting in self._settings:
            if setting.from_lsn >= commit_lsn:
                break
            found = setting
        return found

    def may_enforce(self, table: TableSpec) -> bool:
        """Whether any setting (the spec's or a row's) narrows updates of `table`."""
        if self.spec.ownership_enforced and table.owned_by_service:
            return True
        return any(s.enforced and (table.owned_by_service if s.owned is None else s.owned.get(table.target))
                   for s in self._settings)

    def owned(self, table: TableSpec, commit_lsn: int) -> tuple[str, ...]:
        setting = self.setting_at(commit_lsn)
        if setting is None:
            return table.owned_by_service if self.spec.ownership_enforced else ()
        if not setting.enforced:
            return ()
        if setting.owned is None:
            return table.owned_by_service
        return setting.owned.get(table.target, ())


def _resolve(spec: SyncSpec, owned: Any) -> dict[str, tuple[str, ...]] | None:
    """A row's `owned` by service table name, validated through the spec (CDCError naming the fix)."""
    if owned is None:
        return None
    try:
        resolved = spec.with_ownership("enforced", owned)
    except CDCError as exc:
        raise CDCError(
            f"strangler.ownership names columns the spec {spec.name!r} does not map ({exc}); record a corrected row "
            "with cdc.fence.set_ownership(...) from the same fence"
        ) from exc
    named = set(owned)
    return {t.target: t.owned_by_service for t in resolved.tables if t.target in named or t.source in named}


def load_policy(cur: Any, spec: SyncSpec) -> OwnershipPolicy:
    """Lock the spec's checkpoint row and read its ownership rows, in the caller's transaction."""
    cur.execute(
        "SELECT 1 FROM strangler.checkpoint WHERE name = %s FOR UPDATE; "
        "SELECT from_lsn, enforced, owned FROM strangler.ownership WHERE name = %s ORDER BY from_lsn, id",
        (spec.name, spec.name),
    )
    return OwnershipPolicy(spec, cur.fetchall())


def _owned_json(owned: Mapping[str, Sequence[str]] | None, spec: SyncSpec | None) -> str | None:
    if owned is None:
        if spec is not None and not any(t.owned_by_service for t in spec.tables):
            raise CDCError(f"{spec.path}: no table of spec {spec.name!r} lists owned_by_service; give `owned`, e.g. "
                           "{'catalog.products': ['title', 'price_cents']}")
        return None
    if not isinstance(owned, Mapping) or any(
        not isinstance(cols, (list, tuple)) or not all(isinstance(c, str) for c in cols) for cols in owned.values()
    ):
        raise CDCError(f"owned must map each service table to its service-owned columns, e.g. "
                       f"{{'catalog.products': ['title', 'price_cents']}}; got {owned!r}")
    if spec is not None:
        spec.with_ownership("enforced", owned)  # raises SpecError naming each bad table or column
    return json.dumps({str(t): list(cols) for t, cols in owned.items()})


def set_ownership(
    target_url: str,
    name: str,
    *,
    enforced: bool,
    from_lsn: int,
    owned: Mapping[str, Sequence[str]] | None = None,
    note: str = "",
    spec: SyncSpec | None = None,
    conn: Any = None,
) -> None:
    """Record that from source position `from_lsn` on the applier of spec `name` enforces ownership or not.

    `owned` maps a service table (or its legacy name) to its service-owned service columns, as the
    cutover plan names them; None: the spec's `owned_by_service`. Given `spec`, the names are
    checked now (`SpecError`) instead of stopping the applier when it reads the row. `conn`: an
    open transactional connection to the target to use (and leave open).
    """
    if from_lsn < 0:
        raise CDCError(f"from_lsn must be a source WAL position (cdc.fence.emit_fence), got {from_lsn}")
    owned_text = _owned_json(owned, spec)

    def record(cur: Any, applied: int) -> None:
        cur.execute(
            "INSERT INTO strangler.ownership (name, from_lsn, enforced, owned, note, applied_lsn) "
            "VALUES (%s, %s, %s, %s::jsonb, %s, %s)",
            (name, from_lsn, enforced, owned_text, note, applied),
        )

    _with_checkpoint_locked(target_url, name, record, conn, "record ownership for")


def probe_ownership(target_url: str, name: str, *, conn: Any = None) -> None:
    """What `set_ownership` does, recording nothing: the same connection, locks (the applier's
    checkpoint row included: it waits for a batch being applied) and a commit that is flushed.
    The write switch times it to estimate its pause."""

    def record(cur: Any, applied: int) -> None:
        cur.execute("SELECT txid_current()")  # a transaction id: its commit is flushed, as the row's would be

    _with_checkpoint_locked(target_url, name, record, conn, "probe ownership for")


def _with_checkpoint_locked(target_url: str, name: str, record: Any, conn: Any, what: str) -> None:
    """The ownership table made sure of, then `record(cur, applied position)` in a transaction that
    holds the spec's checkpoint row (see the module)."""
    own = conn is None
    if own:
        conn = connect(target_url, "target")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('strangler.ddl'))")
            cur.execute(DDL)  # the applier's own tables come with its first run (cdc.apply.ensure_schema)
        with conn, conn.cursor() as cur:
            row = None
            cur.execute("SELECT to_regclass('strangler.checkpoint') IS NOT NULL")
            if cur.fetchone()[0]:
                # The applier locks its checkpoint row while it reads ownership: a batch committed
                # after this returns sees the new row.
                cur.execute("SELECT commit_lsn FROM strangler.checkpoint WHERE name = %s FOR UPDATE", (name,))
                row = cur.fetchone()
            record(cur, int(row[0]) if row else 0)
    except psycopg2.Error as exc:
        raise CDCError(f"cannot {what} {name!r} in the target: {one_line(exc)}") from exc
    finally:
        if own:
            conn.close()


def ownership_state(target_url: str, name: str) -> dict[str, Any]:
    """The ownership recorded for spec `name`: the latest setting and every row, oldest first.

    `{"name", "enforced": bool | None (None: no row, the spec's own setting), "from_lsn", "owned",
    "note", "history": [{"id", "from_lsn", "enforced", "owned", "note", "applied_lsn", "recorded_at"}]}`."""
    conn = connect(target_url, "target")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('strangler.ownership') IS NOT NULL")
            rows: list[tuple[Any, ...]] = []
            if cur.fetchone()[0]:
                cur.execute(
                    "SELECT id, from_lsn, enforced, owned, note, applied_lsn, recorded_at FROM strangler.ownership "
                    "WHERE name = %s ORDER BY from_lsn, id",
                    (name,),
                )
                rows = cur.fetchall()
        conn.rollback()
    except psycopg2.Error as exc:
        raise CDCError(f"cannot read ownership of {name!r} from the target: {one_line(exc)}") from exc
    finally:
        conn.close()
    history = [{"id": r[0], "from_lsn": int(r[1]), "enforced": r[2], "owned": r[3], "note": r[4],
                "applied_lsn": int(r[5]), "recorded_at": r[6].isoformat()} for r in rows]
    latest = history[-1] if history else None
    return {
        "name": name,
        "enforced": latest["enforced"] if latest else None,
        "from_lsn": latest["from_lsn"] if latest else None,
        "owned": latest["owned"] if latest else None,
        "note": latest["note"] if latest else "",
        "history": history,
    }
