"""The conflict table: legacy writes to service-owned columns, kept instead of applied.

After the write switch the service owns some columns of a moved row (`owned_by_service` in the
sync spec, in force with `ownership: enforced`). A legacy change to one of them (a batch job that
bypasses the façade) is not written to the service's store; it is recorded here with both values:

`strangler.conflict(id, spec, target_table, pk, columns jsonb, position bigint[], source_time,
recorded_at)`, `columns` mapping each conflicting service column to `{"legacy": new value,
"service": current value}`. Rows are written in the applier's transaction, beside the checkpoint
that moves past their event, and `(spec, target_table, pk, position)` is unique, so a redelivered
event records nothing twice.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["Conflict", "DDL", "count", "for_table", "insert", "list_recent", "pk_text"]

DDL = """
CREATE SCHEMA IF NOT EXISTS strangler;
CREATE TABLE IF NOT EXISTS strangler.conflict (
    id bigserial PRIMARY KEY,
    spec text NOT NULL,
    target_table text NOT NULL,
    pk text NOT NULL,
    columns jsonb NOT NULL,
    position bigint[] NOT NULL,
    source_time timestamptz,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (spec, target_table, pk, position)
);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Conflict:
    """One legacy write to service-owned columns that was not applied."""

    id: int
    spec: str
    target_table: str
    key: list[Any]
    columns: dict[str, dict[str, Any]]
    position: tuple[int, int]
    source_time: dt.datetime | None
    recorded_at: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "spec": self.spec, "target_table": self.target_table, "key": self.key,
            "columns": self.columns, "position": list(self.position),
            "source_time": self.source_time.isoformat() if self.source_time else None,
            "recorded_at": self.recorded_at.isoformat(),
        }

    def describe(self) -> str:
        """One line naming the conflict, e.g. for verify's failure."""
        cols = ", ".join(f"{c} legacy={v.get('legacy')!r} service={v.get('service')!r}" for c, v in self.columns.items())
        return f"conflict #{self.id} at {list(self.position)}: {cols}"


def pk_text(key: tuple[Any, ...]) -> str:
    """A row key as the JSON text the applier's bookkeeping tables store."""
    if len(key) == 1 and type(key[0]) is int:
        return f"[{key[0]}]"
    return json.dumps(list(key), default=str, separators=(",", ":"))


def insert(
    cur: Any,
    spec: str,
    target_table: str,
    key: tuple[Any, ...],
    columns: dict[str, dict[str, Any]],
    position: tuple[int, int],
    source_ts_ms: int,
) -> None:
    """Record a conflict using the caller's cursor (inside its transaction); once per position."""
    cur.execute(
        "INSERT INTO strangler.conflict (spec, target_table, pk, columns, position, source_time) "
        "VALUES (%s, %s, %s, %s::jsonb, %s, CASE WHEN %s > 0 THEN to_timestamp(%s / 1000.0) END) "
        "ON CONFLICT (spec, target_table, pk, position) DO NOTHING",
        (spec, target_table, pk_text(key), json.dumps(columns, default=str), list(position), source_ts_ms, source_ts_ms),
    )


def _row(r: tuple[Any, ...]) -> Conflict:
    return Conflict(id=r[0], spec=r[1], target_table=r[2], key=json.loads(r[3]), columns=r[4],
                    position=(r[5][0], r[5][1]), source_time=r[6], recorded_at=r[7])


_COLUMNS = "id, spec, target_table, pk, columns, position, source_time, recorded_at"


def _exists(cur: Any) -> bool:
    cur.execute("SELECT to_regclass('strangler.conflict') IS NOT NULL")
    return bool(cur.fetchone()[0])


def count(cur: Any, spec: str) -> int:
    """Conflicts recorded for the spec (0 when the table does not exist yet)."""
    if not _exists(cur):
        return 0
    cur.execute("SELECT count(*) FROM strangler.conflict WHERE spec = %s", (spec,))
    return int(cur.fetchone()[0])


def list_recent(cur: Any, spec: str, limit: int = 5) -> list[Conflict]:
    """The latest conflicts of the spec, newest first."""
    if not _exists(cur):
        return []
    cur.execute(f"SELECT {_COLUMNS} FROM strangler.conflict WHERE spec = %s ORDER BY id DESC LIMIT %s", (spec, limit))
    return [_row(r) for r in cur.fetchall()]


def for_table(cur: Any, spec: str, target_table: str) -> dict[str, Conflict]:
    """The latest conflict of each row of a service table, by key text (`pk_text`)."""
    if not _exists(cur):
        return {}
    cur.execute(
        f"SELECT DISTINCT ON (pk) {_COLUMNS} FROM strangler.conflict WHERE spec = %s AND target_table = %s "
        "ORDER BY pk, id DESC",
        (spec, target_table),
    )
    return {r[3]: _row(r) for r in cur.fetchall()}
