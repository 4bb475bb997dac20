"""Row-by-row diff of the legacy tables and the service tables, through the sync spec.

Both sides are read ordered by primary key with server-side cursors and merged in Python, so
memory stays bounded whatever the table size. Source rows go through the same `RowMapper` the
applier uses (filtered rows are expected to be absent from the target). Positions are aligned
first: the diff runs once the applier's checkpoint (or the slot's confirmed flush position)
has reached the source's current WAL position, and is retried while the applier catches up; the
positions compared are part of the result.

A mismatched row whose differing columns were the subject of a recorded ownership conflict
(`cdc.conflicts`: a legacy write to a service-owned column, not applied) is counted as
`conflicted` and its sample names the conflict; it fails the verify like any mismatch, and no
amount of waiting heals it, so the retries stop when only such rows differ.

A reverse spec (service store → legacy tables) is compared the same way, service rows through
the reverse mapping against the legacy rows; its filters then also say which legacy rows are
not the service's (the legacy-only rows the forward spec filters out), on the columns they name
that are copied unchanged, and those legacy rows are left out of the comparison.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import psycopg2

from cdc import conflicts as conflict_table
from cdc.apply import load_checkpoint
from cdc.conflicts import Conflict, pk_text
from cdc.database import one_line
from cdc.exceptions import CDCError
from cdc.mapping import RowMapper
from cdc.spec import SyncSpec, TableSpec
from common.waiting import TimedOut, wait_until

__all__ = ["TableDiff", "VerifyResult", "diff_rows", "verify"]

SAMPLES = 5


@dataclass(slots=True)
class TableDiff:
    """The comparison of one legacy table with its service table."""

    source: str
    target: str
    matching: int = 0
    mismatched: int = 0
    only_in_source: int = 0
    only_in_target: int = 0
    # Mismatched rows explained by a recorded ownership conflict (also counted in `mismatched`).
    conflicted: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    # Keys of the rows that differ (for `verify(steady=True)`, which keeps those that differ every round).
    differing: dict[tuple[Any, ...], str] = field(default_factory=dict, repr=False)
    # With `steady`: rows that differed in a round but not in every one (changes in flight).
    transient: int = 0

    @property
    def identical(self) -> bool:
        return not (self.mismatched or self.only_in_source or self.only_in_target)


@dataclass(slots=True)
class VerifyResult:
    """Every table's diff and the positions compared."""

    spec: str
    tables: list[TableDiff]
    source_lsn: int | None
    applied_position: tuple[int, int]
    aligned: bool

    @property
    def identical(self) -> bool:
        return all(t.identical for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "identical": self.identical,
            "aligned": self.aligned,
            "source_lsn": self.source_lsn,
            "applied_position": list(self.applied_position),
            "tables": [{**{k: v for k, v in asdict(t).items() if k != "differing"}, "identical": t.identical}
                       for t in self.tables],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _normalise(value: Any) -> Any:
    """Values equal in meaning compare equal (e.g. Decimal vs int from different column types)."""
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def diff_rows(
    table: TableSpec,
    source_rows: Iterator[dict[str, Any]],
    target_rows: Iterator[dict[str, Any]],
    *,
    samples: int = SAMPLES,
    conflicts: Mapping[str, Conflict] | None = None,
) -> TableDiff:
    """Merge-join mapped source rows and target rows, both ordered by key. Pure.

    `conflicts`: the latest recorded conflict of each row, by key text (`cdc.conflicts.pk_text`)."""
    mapper = RowMapper(table)
    diff = TableDiff(source=table.source, target=table.target)
    key_cols = table.target_key

    def mapped() -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
        for row in source_rows:
            try:
                out = mapper.map(row)
            except CDCError as exc:
                out = {"__unmappable__": str(exc), **{k: row.get(s) for s, k in zip(table.key, key_cols, strict=True)}}
            if out is not None:
                yield tuple(out[k] for k in key_cols), out

    def conflict_of(key: tuple[Any, ...], src: dict[str, Any], dst: dict[str, Any]) -> Conflict | None:
        found = conflicts.get(pk_text(key)) if conflicts else None
        if found is None:
            return None
        differing = {c for c in src if _normalise(src.get(c)) != _normalise(dst.get(c))}
        return found if differing & set(found.columns) else None

    def sample(kind: str, key: tuple[Any, ...], src: dict[str, Any] | None, dst: dict[str, Any] | None,
               conflict: Conflict | None = None) -> None:
        if len(diff.samples) >= samples:
            return
        entry: dict[str, Any] = {"kind": kind, "key": _jsonable(list(key))}
        if conflict is not None:
            entry["conflict"] = {"id": conflict.id, "position": list(conflict.position), "describe": conflict.describe()}
        if src is not None and dst is not None:
            entry["columns"] = {
                c: {"source": _jsonable(src.get(c)), "target": _jsonable(dst.get(c))}
                for c in sorted(set(src) | set(dst)) if _normalise(src.get(c)) != _normalise(dst.get(c))
            }
        else:
            entry["row"] = _jsonable(src if src is not None else dst)
        diff.samples.append(entry)

    left = mapped()
    right = ((tuple(r[k] for k in key_cols), r) for r in target_rows)
    a = next(left, None)
    b = next(right, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a[0] < b[0]):
            assert a is not None
            diff.only_in_source += 1
            diff.differing[a[0]] = "only_in_source"
            sample("only_in_source", a[0], a[1], None)
            a = next(left, None)
        elif a is None or b[0] < a[0]:
            diff.only_in_target += 1
            diff.differing[b[0]] = "only_in_target"
            sample("only_in_target", b[0], None, b[1])
            b = next(right, None)
        else:
            src, dst = a[1], b[1]
            if all(_normalise(src.get(c)) == _normalise(dst.get(c)) for c in src) and "__unmappable__" not in src:
                diff.matching += 1
            else:
                diff.mismatched += 1
                conflict = conflict_of(a[0], src, dst)
                diff.conflicted += conflict is not None
                diff.differing[a[0]] = "conflicted" if conflict is not None else "mismatched"
                sample("mismatched", a[0], src, dst, conflict)
            a = next(left, None)
            b = next(right, None)
    return diff


def _keep_persistent(table: TableDiff, before: TableDiff) -> None:
    """Count as different only the rows that also differed in the round before (`before` holds
    those that differed in every round so far); the rest become `transient`."""
    persistent = {key: kind for key, kind in table.differing.items() if key in before.differing}
    gone = len(table.differing) - len(persistent)
    kinds = list(persistent.values())
    table.only_in_source = kinds.count("only_in_source")
    table.only_in_target = kinds.count("only_in_target")
    table.conflicted = kinds.count("conflicted")
    table.mismatched = kinds.count("mismatched") + table.conflicted
    table.matching += gone
    table.transient = before.transient + gone
    table.samples = [s for s in table.samples if tuple(s["key"]) in {tuple(_jsonable(list(k))) for k in persistent}]
    table.differing = persistent


def _stream(conn: Any, sql: str, name: str, batch: int = 5000) -> Iterator[dict[str, Any]]:
    with conn.cursor(name=name) as cur:
        cur.itersize = batch
        cur.execute(sql)
        columns: list[str] | None = None
        for row in cur:
            if columns is None:
                columns = [d[0] for d in cur.description]
            yield dict(zip(columns, row, strict=True))


def _ident(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _diff_table(spec: SyncSpec, source: Any, target: Any, table: TableSpec, samples: int) -> TableDiff:
    src_cols = ", ".join(_ident(c) for c in table.source_columns)
    dst_cols = ", ".join(_ident(c) for c in table.target_columns)
    src_sql = (f"SELECT {src_cols} FROM {_ident(table.source_schema, table.source_table)} "
               f"ORDER BY {', '.join(_ident(k) for k in table.key)}")
    dst_sql = (f"SELECT {dst_cols} FROM {_ident(table.target_schema, table.target_table)} "
               f"ORDER BY {', '.join(_ident(k) for k in table.target_key)}")
    with target.cursor() as cur:
        recorded = conflict_table.for_table(cur, spec.name, table.target)
    target_rows = _stream(target, dst_sql, "strangler_verify_dst")
    if spec.reverse and table.filters:
        target_rows = _service_rows(table, target_rows)
    return diff_rows(table, _stream(source, src_sql, "strangler_verify_src"), target_rows,
                     samples=samples, conflicts=recorded)


def _service_rows(table: TableSpec, rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Reverse spec: the legacy rows its filters accept (on the columns copied unchanged)."""
    plain = {c.target: c.source for c in table.columns if c.transform is None and c.function is None}
    named = {f.column for f in table.filters}
    columns = {t: s for t, s in plain.items() if s in named}
    mapper = RowMapper(replace(table, filters=tuple(f for f in table.filters if f.column in columns.values())))
    for row in rows:
        if mapper.accepts({s: row[t] for t, s in columns.items()}):
            yield row


def _aligned(spec: SyncSpec, source: Any, target: Any) -> tuple[bool, int, tuple[int, int]]:
    with source.cursor() as cur:
        cur.execute("SELECT pg_current_wal_lsn()::text")
        source_lsn = _lsn(cur.fetchone()[0])
        cur.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (spec.slot_name,))
        row = cur.fetchone()
    source.rollback()
    checkpoint = load_checkpoint(target, spec.name)
    flushed = _lsn(row[0]) if row and row[0] else 0
    aligned = checkpoint.position[0] >= source_lsn or flushed >= source_lsn
    return aligned, source_lsn, checkpoint.position


def _lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def verify(
    spec: SyncSpec,
    *,
    wait: float = 30.0,
    samples: int = SAMPLES,
    connect: Callable[[str], Any] = psycopg2.connect,
    on_wait: Callable[[str], None] | None = None,
    steady: bool = False,
) -> VerifyResult:
    """Diff every table of the spec; retried while the applier catches up, for at most `wait` s.

    `steady` is for a source under write load, where every full diff catches some rows between
    their commit and their apply: a row counts as different only if it differs in every round, so
    the answer is identical once no row has differed in all rounds (at least two); the others are
    counted as `transient`. A lost or diverged row differs in every round and fails it."""
    if not spec.source_url or not spec.target_url:
        raise CDCError(f"{spec.path}: verify needs both databases: give --source-url/--target-url or set them in the spec")
    try:
        source = connect(spec.source_url)
        target = connect(spec.target_url)
    except psycopg2.Error as exc:
        raise CDCError(f"cannot connect for verify: {one_line(exc)}") from exc
    results: list[VerifyResult] = []

    def diff() -> bool:
        if results and on_wait is not None:
            on_wait("differences found while the applier may still be catching up; retrying")
        aligned, source_lsn, applied = _aligned(spec, source, target)
        tables = []
        for table in spec.tables:
            try:
                tables.append(_diff_table(spec, source, target, table, samples))
            except psycopg2.Error as exc:
                raise CDCError(f"verify could not read {table.source} or {table.target}: {str(exc).strip()}") from exc
            finally:
                source.rollback()
                target.rollback()
        if steady and results:
            for table, before in zip(tables, results[-1].tables, strict=True):
                _keep_persistent(table, before)
        results.append(VerifyResult(spec=spec.name, tables=tables, source_lsn=source_lsn, applied_position=applied,
                                    aligned=aligned))
        last = results[-1]
        if steady:
            return len(results) >= 2 and last.identical
        # Only rows held apart by recorded conflicts differ: waiting changes nothing.
        settled = all(not (t.only_in_source or t.only_in_target) and t.mismatched == t.conflicted for t in last.tables)
        return last.identical or (last.aligned and settled)

    try:
        with contextlib.suppress(TimedOut):  # still different after `wait`: the last diff is the answer
            wait_until(diff, wait, 0.2 if steady else 0.5, what="source and target to match")
        return results[-1]
    finally:
        source.close()
        target.close()
