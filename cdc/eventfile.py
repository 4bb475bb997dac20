"""A file of Debezium change events, one JSON document per line: read it, apply it (`cdc apply`).

What a Debezium sink or a `kafka-console-consumer` dump holds; `null` lines (and Connect's
`{"schema": ..., "payload": null}`) are tombstones and skipped: the delete before each did the work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cdc.apply import Applier
from cdc.debezium import parse_envelope
from cdc.exceptions import CDCError
from cdc.spec import SyncSpec

__all__ = ["apply_file", "read_events"]


def read_events(path: Path) -> Iterator[Any]:
    """Debezium-format events, one JSON document per line (`null` lines are tombstones)."""
    try:
        handle = path.open()
    except OSError as exc:
        raise CDCError(f"cannot read {path}: {exc.strerror}; give a file of Debezium events, one per line") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            text = line.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                raise CDCError(f"{path}:{number}: not JSON ({exc.msg}); each line must be one Debezium event") from exc
            if obj is None or (isinstance(obj, dict) and set(obj) == {"schema", "payload"} and obj["payload"] is None):
                continue  # a tombstone: the delete before it did the work
            try:
                yield parse_envelope(obj)
            except CDCError as exc:
                raise CDCError(f"{path}:{number}: {exc}") from exc


def apply_file(spec: SyncSpec, path: Path) -> dict[str, int]:
    """Apply a file of Debezium events; returns counts. Idempotent (per-row position guards)."""
    totals = {"applied": 0, "skipped": 0, "dead_lettered": 0}
    with Applier(spec, ordered=False) as applier:
        chunk: list[Any] = []

        def flush() -> None:
            result = applier.apply(chunk)
            totals["applied"] += result.applied
            totals["skipped"] += result.skipped
            totals["dead_lettered"] += result.dead_lettered
            chunk.clear()

        for event in read_events(path):
            chunk.append(event)
            if len(chunk) >= spec.batch_size:
                flush()
        if chunk:
            flush()
    return totals
