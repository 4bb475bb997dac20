"""The dead-letter table: poison events kept with the reason, in the target database.

`strangler.dead_letter(id, spec, received_at, event jsonb, reason text, position bigint[])`.
Rows are written in the applier's own transaction, so a dead letter and the checkpoint that
moves past its event commit together.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from cdc.events import ChangeEvent

__all__ = ["DDL", "DeadLetter", "count", "event_json", "insert", "list_recent"]

DDL = """
CREATE SCHEMA IF NOT EXISTS strangler;
CREATE TABLE IF NOT EXISTS strangler.dead_letter (
    id bigserial PRIMARY KEY,
    spec text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    event jsonb NOT NULL,
    reason text NOT NULL,
    position bigint[] NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letter_spec ON strangler.dead_letter (spec, id);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One stored poison event."""

    id: int
    spec: str
    received_at: dt.datetime
    event: dict[str, Any]
    reason: str
    position: tuple[int, int]


def event_json(event: ChangeEvent) -> str:
    """The event as Debezium would have written it (so it can be replayed with `cdc apply`)."""
    try:
        envelope = event.to_debezium()
    except Exception:  # noqa: BLE001 - an event too broken to encode is still kept, as text
        envelope = {"op": event.op, "source": event.source.to_dict(), "before": repr(event.before), "after": repr(event.after)}
    return json.dumps(envelope, default=str)


def insert(cur: Any, spec: str, event: ChangeEvent, reason: str) -> None:
    """Store a poison event using the caller's cursor (inside its transaction)."""
    cur.execute(
        "INSERT INTO strangler.dead_letter (spec, event, reason, position) VALUES (%s, %s::jsonb, %s, %s)",
        (spec, event_json(event), reason[:2000], list(event.position)),
    )


def count(cur: Any, spec: str) -> int:
    cur.execute("SELECT count(*) FROM strangler.dead_letter WHERE spec = %s", (spec,))
    return int(cur.fetchone()[0])


def list_recent(cur: Any, spec: str, limit: int = 20) -> list[DeadLetter]:
    cur.execute(
        "SELECT id, spec, received_at, event, reason, position FROM strangler.dead_letter "
        "WHERE spec = %s ORDER BY id DESC LIMIT %s",
        (spec, limit),
    )
    return [
        DeadLetter(id=r[0], spec=r[1], received_at=r[2], event=r[3], reason=r[4], position=(r[5][0], r[5][1]))
        for r in cur.fetchall()
    ]
