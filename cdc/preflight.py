"""`cdc check`: everything `cdc run` needs from the two databases, checked without changing anything.

Each check reads the catalogs only (no slot, publication or table is created) and ends as `ok`,
`fail` (`cdc run` would fail, or lose data) or `warn` (it runs, with something lost or unknown);
a failure names its fix, the SQL to run or the setting to change. `cdc run` runs the same checks
first and stops with the failures' messages (`require`).

The WAL headroom check estimates what the new slot will hold back while the snapshot copies:
the source's WAL rate (two readings of `pg_current_wal_lsn`) times the copy time projected from
the tables' on-disk size at `COPY_BYTES_PER_SECOND`.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg2

from cdc.database import connect, one_line
from cdc.exceptions import CDCError, SchemaChangedError
from cdc.relations import check_relations
from cdc.spec import SyncSpec, TableSpec

__all__ = ["COPY_BYTES_PER_SECOND", "Check", "PreflightError", "PreflightResult", "preflight", "require", "size_text", "wal_rate"]

# A conservative rate of the snapshot copy (table bytes on disk per second) for projections.
COPY_BYTES_PER_SECOND = 20 << 20


class PreflightError(CDCError):
    """`cdc run` found a precondition unmet; the message lists each failed check and its fix."""


@dataclass(frozen=True, slots=True)
class Check:
    """One check: `status` is ok, fail or warn; `fix` says what to do when it is not ok."""

    name: str
    status: str
    message: str
    fix: str | None = None

    @property
    def sentence(self) -> str:
        return f"{self.message}; {self.fix}" if self.fix else self.message


@dataclass(slots=True)
class PreflightResult:
    """Every check of a spec, in the order run."""

    spec: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "ok": self.ok, "failures": len(self.failures), "warnings": len(self.warnings),
                "checks": [asdict(c) for c in self.checks]}


def _q(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


def _one(conn: Any, statement: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(statement, params)
        row = cur.fetchone()
    return row[0] if row else None


def size_text(n: float) -> str:
    """Bytes as B, kB, MB, GB or TB, for messages."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def wal_rate(conn: Any, seconds: float) -> float:
    """The source's WAL bytes per second over `seconds` (two readings of pg_current_wal_lsn)."""
    first = int(_one(conn, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
    start = time.monotonic()
    time.sleep(seconds)  # the measurement interval itself, not a synchronisation
    second = int(_one(conn, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
    return max(0, second - first) / max(time.monotonic() - start, 1e-3)


# -- the checks ------------------------------------------------------------------------------------


def _wal_level(conn: Any) -> Check:
    level = _one(conn, "SHOW wal_level")
    if level == "logical":
        return Check("wal_level", "ok", "wal_level is logical")
    return Check("wal_level", "fail", f"wal_level is {level!r}, logical replication needs 'logical'",
                 "run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL")


def _slots(conn: Any, spec: SyncSpec) -> list[Check]:
    with conn.cursor() as cur:
        cur.execute("SELECT slot_name::text, active FROM pg_replication_slots ORDER BY slot_name")
        slots = cur.fetchall()
    limit = int(_one(conn, "SHOW max_replication_slots"))
    senders = int(_one(conn, "SHOW max_wal_senders"))
    walsenders = int(_one(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'"))
    checks = []
    if any(name == spec.slot_name for name, _ in slots):
        checks.append(Check("replication slots", "ok", f"slot {spec.slot_name} exists (the run resumes from it)"))
    elif len(slots) < limit:
        checks.append(Check("replication slots", "ok", f"{limit - len(slots)} of {limit} replication slots free"))
    else:
        idle = [name for name, active in slots if not active]
        drop = (f"drop an unused one (SELECT pg_drop_replication_slot('{idle[0]}'); inactive: {', '.join(idle)}) or "
                if idle else "")
        checks.append(Check("replication slots", "fail", f"all {limit} replication slots are in use "
                            f"({', '.join(name for name, _ in slots)}), none left for {spec.slot_name}",
                            f"{drop}run ALTER SYSTEM SET max_replication_slots = {limit + 1}; and restart PostgreSQL"))
    if walsenders < senders:
        checks.append(Check("WAL senders", "ok", f"{senders - walsenders} of {senders} WAL senders free"))
    else:
        checks.append(Check("WAL senders", "fail", f"all {senders} WAL senders (max_wal_senders) are busy",
                            f"run ALTER SYSTEM SET max_wal_senders = {senders + 1}; and restart PostgreSQL, "
                            "or stop a replication client"))
    return checks


def _privileges(conn: Any, spec: SyncSpec, tables: list[TableSpec], replication: bool) -> list[Check]:
    with conn.cursor() as cur:
        cur.execute("SELECT current_user::text, current_database()::text, rolsuper, rolreplication "
                    "FROM pg_roles WHERE rolname = current_user")
        role, dbname, superuser, can_replicate = cur.fetchone()
    checks = []
    if replication:
        if superuser or can_replicate:
            checks.append(Check("REPLICATION privilege", "ok", f"role {role} may replicate"
                                + (" (superuser)" if superuser else "")))
        else:
            checks.append(Check("REPLICATION privilege", "fail",
                                f"role {role} has neither REPLICATION nor superuser, so it cannot open a slot",
                                f"run ALTER ROLE {_q(role)} REPLICATION;"))
    unreadable = [t.source for t in tables
                  if not _one(conn, "SELECT has_table_privilege(current_user, %s::regclass, 'SELECT')",
                              (_q(t.source_schema, t.source_table),))]
    if unreadable:
        checks.append(Check("SELECT privilege", "fail", f"role {role} cannot read {', '.join(unreadable)}",
                            f"run GRANT SELECT ON {', '.join(unreadable)} TO {_q(role)};"))
    else:
        checks.append(Check("SELECT privilege", "ok", f"role {role} reads every source table"))
    if replication and not _one(conn, "SELECT 1 FROM pg_publication WHERE pubname = %s", (spec.publication_name,)):
        problems, fixes = [], []
        if not superuser and not _one(conn, "SELECT has_database_privilege(current_database(), 'CREATE')"):
            problems.append(f"no CREATE privilege on database {dbname}")
            fixes.append(f"GRANT CREATE ON DATABASE {_q(dbname)} TO {_q(role)};")
        not_owned = [t.source for t in tables if not superuser and not _one(
            conn, "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = %s::regclass",
            (_q(t.source_schema, t.source_table),))]
        if not_owned:
            problems.append(f"publishing a table needs its owner: {role} does not own {', '.join(not_owned)}")
            fixes += [f"ALTER TABLE {t} OWNER TO {_q(role)};" for t in not_owned]
        if problems:
            checks.append(Check("CREATE PUBLICATION", "fail", f"role {role} cannot create publication "
                                f"{spec.publication_name}: {'; '.join(problems)}",
                                f"run {' '.join(fixes)} or create it as a superuser: CREATE PUBLICATION "
                                f"{spec.publication_name} FOR TABLE {', '.join(t.source for t in tables)};"))
        else:
            checks.append(Check("CREATE PUBLICATION", "ok", f"role {role} can create publication {spec.publication_name}"))
    return checks


def _version(conn: Any, spec: SyncSpec) -> Check:
    number = int(_one(conn, "SHOW server_version_num"))
    shown = f"{number // 10000}.{number % 10000}"
    other = "forward" if spec.reverse else "reverse"
    if number >= 160000:
        return Check("PostgreSQL version", "ok", f"PostgreSQL {shown} filters changes by replication origin "
                     f"(origin 'none'): what the {other} stream's applier writes here is not captured again")
    # Before 16 the server cannot filter, but it sends each replayed transaction's Origin message.
    return Check("PostgreSQL version", "ok", f"PostgreSQL {shown} sends the replication origin of each transaction and "
                 f"the capture drops those an applier wrote: what the {other} stream's applier writes here is not "
                 "captured again")


def _replica_identity(conn: Any, tables: list[TableSpec]) -> Check:
    """Reverse spec: full before images tell a service change of a legacy-owned column from a stale copy."""
    partial = [t.source for t in tables if _one(conn, "SELECT relreplident FROM pg_class WHERE oid = to_regclass(%s)",
                                                (_q(t.source_schema, t.source_table),)) != "f"]
    if not partial:
        return Check("replica identity", "ok", "every service table sends full old rows: only a real service change "
                     "to a legacy-owned column is a conflict")
    return Check("replica identity", "warn",
                 f"{', '.join(partial)} sends no old values with its updates, so a service update of a row whose "
                 "legacy-owned columns (e.g. stock) changed in the legacy database since is recorded as a conflict",
                 "run " + " ".join(f"ALTER TABLE {t} REPLICA IDENTITY FULL;" for t in partial)
                 + " (in the service's migrations)")


def _keys(conn: Any, tables: list[TableSpec]) -> tuple[Check, list[TableSpec]]:
    """Tables that exist and can be keyed; the check names the others."""
    missing, keyless, present = [], [], []
    for t in tables:
        with conn.cursor() as cur:
            cur.execute("SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND "
                        "i.indisprimary) FROM pg_class c WHERE c.oid = to_regclass(%s)", (_q(t.source_schema, t.source_table),))
            row = cur.fetchone()
        if row is None:
            missing.append(t.source)
            continue
        present.append(t)
        if not row[1] and row[0] != "f":
            keyless.append(t.source)
    if missing:
        return Check("source tables", "fail", f"source table {', '.join(missing)} does not exist",
                     "fix the table name in the sync spec, or migrate the legacy database"), present
    if keyless:
        fixes = " or ".join(f"ALTER TABLE {t} ADD PRIMARY KEY (...); or ALTER TABLE {t} REPLICA IDENTITY FULL;"
                            for t in keyless)
        return Check("primary keys", "fail", f"{', '.join(keyless)} has no primary key or replica identity full, "
                     "so its updates and deletes cannot be keyed", f"run {fixes}"), present
    return Check("primary keys", "ok", f"every source table has a primary key or replica identity ({len(tables)})"), present


def _filters(conn: Any, tables: list[TableSpec]) -> Check:
    bad = []
    for t in tables:
        for f in t.filters:
            if not _one(conn, "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
                        "AND attnum > 0 AND NOT attisdropped", (_q(t.source_schema, t.source_table), f.column)):
                bad.append(f"{t.source}.{f.column}")
    if bad:
        return Check("filters", "fail", f"filter column {', '.join(bad)} does not exist in the source",
                     "name an existing legacy column in the spec's filter")
    count = sum(len(t.filters) for t in tables)
    return Check("filters", "ok", f"{count} filter(s) name real source columns")


def _transforms(spec: SyncSpec) -> Check:
    # The spec loader imports every module:function transform; one that fails to import stops
    # loading with its file:line:col, so a loaded spec has all of them.
    named = sorted({t.transform for t in spec.tables if t.transform}
                   | {c.transform for t in spec.tables for c in t.columns if c.transform})
    return Check("transforms", "ok", f"transforms importable: {', '.join(named) or 'none used'}")


def _target_tables(conn: Any, spec: SyncSpec) -> Check:
    missing = [t.target for t in spec.tables
               if not _one(conn, "SELECT to_regclass(%s) IS NOT NULL", (_q(t.target_schema, t.target_table),))]
    conn.rollback()
    if missing:
        return Check("target schema", "fail", f"target table {', '.join(missing)} does not exist (schema not migrated)",
                     f"run the service's migrations first, e.g. python -m extracted.{spec.name} migrate")
    return Check("target schema", "ok", f"every target table exists ({len(spec.tables)})")


def _columns(spec: SyncSpec, source: Any, target: Any) -> Check:
    try:
        check_relations(spec, source, target)
    except SchemaChangedError as exc:
        return Check("columns", "fail", str(exc))
    return Check("columns", "ok", "every mapped column exists with a compatible type on both sides")


def _wal_headroom(conn: Any, spec: SyncSpec, tables: list[TableSpec], sample_seconds: float) -> Check:
    if _one(conn, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (spec.slot_name,)):
        return Check("WAL headroom", "ok", f"slot {spec.slot_name} exists: no new snapshot to copy")
    if spec.snapshot == "never":
        return Check("WAL headroom", "ok", "snapshot: never: the stream starts at the slot's creation, nothing to copy")
    table_bytes = sum(int(_one(conn, "SELECT pg_total_relation_size(%s::regclass)", (_q(t.source_schema, t.source_table),)))
                      for t in tables)
    rate = wal_rate(conn, sample_seconds)
    seconds = table_bytes / COPY_BYTES_PER_SECOND
    retained = rate * seconds
    estimate = (f"the snapshot of {size_text(table_bytes)} takes about {seconds:.0f} s; at {size_text(rate)}/s of WAL "
                f"the slot holds back about {size_text(retained)}")
    keep = int(_one(conn, "SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size'") or -1)
    if keep >= 0 and retained > keep << 20:
        return Check("WAL headroom", "fail", f"{estimate}, more than max_slot_wal_keep_size ({keep} MB): "
                     "the slot would be invalidated during the copy",
                     f"run ALTER SYSTEM SET max_slot_wal_keep_size = '{int(retained * 2) >> 20}MB'; "
                     "SELECT pg_reload_conf();")
    free = _free_wal_disk(conn)
    if free is None:
        return Check("WAL headroom", "warn", f"{estimate}; the server's free disk cannot be read from here",
                     f"make sure the source's pg_wal has at least {size_text(retained * 2)} free")
    if free < retained * 2:
        return Check("WAL headroom", "fail", f"{estimate}, but only {size_text(free)} is free under pg_wal",
                     f"free at least {size_text(retained * 2 - free)} on the source's WAL disk, or copy at a quieter time")
    return Check("WAL headroom", "ok", f"{estimate}; {size_text(free)} free under pg_wal")


def _free_wal_disk(conn: Any) -> int | None:
    """Free bytes on the disk of the server's pg_wal, when that directory is on this machine."""
    try:
        directory = _one(conn, "SHOW data_directory")
    except psycopg2.Error:  # needs superuser or pg_read_all_settings
        conn.rollback()
        return None
    host = conn.info.host or ""
    if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("/"):
        return None
    with contextlib.suppress(OSError):
        return shutil.disk_usage(f"{directory}/pg_wal").free
    return None


@contextlib.contextmanager
def _connection(dsn: str | None, role: str, spec: SyncSpec) -> Iterator[Any]:
    if not dsn:
        option = "--source-url" if role == "source" else "--target-url"
        raise CDCError(f"{spec.path}: no {role} database; set {role}.url in the spec or give {option}")
    conn = connect(dsn, role)
    conn.set_session(readonly=True, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def preflight(spec: SyncSpec, *, replication: bool = True, wal_sample_seconds: float = 1.0) -> PreflightResult:
    """Run every check of `spec` against its source and target; changes nothing.

    `replication=False` leaves out what only our own capture needs (Debezium Connect reads the
    source instead): wal_level, slots, WAL senders, REPLICATION, the publication, WAL headroom.
    """
    result = PreflightResult(spec=spec.path)
    add = result.checks.append
    try:
        with _connection(spec.source_url, "source", spec) as source, \
                _connection(spec.target_url, "target", spec) as target:
            if replication:
                add(_wal_level(source))
                result.checks += _slots(source, spec)
            add(_version(source, spec))
            keys, present = _keys(source, list(spec.tables))
            add(keys)
            if spec.reverse:
                add(_replica_identity(source, present))
            result.checks += _privileges(source, spec, present, replication)
            add(_transforms(spec))
            add(_filters(source, present))
            add(_target_tables(target, spec))
            if len(present) == len(spec.tables):
                add(_columns(spec, source, target))
            if replication:
                add(_wal_headroom(source, spec, present, wal_sample_seconds))
    except psycopg2.Error as exc:
        raise CDCError(f"{spec.path}: preflight query failed: {one_line(exc)}") from exc
    return result


def require(result: PreflightResult) -> None:
    """Raise `PreflightError` (`SchemaChangedError` for mapped columns) naming every failed check."""
    failures = result.failures
    if not failures:
        return
    if all(c.name == "columns" for c in failures):
        raise SchemaChangedError(failures[0].message)
    raise PreflightError(f"{result.spec}: cdc run cannot start: " + " ".join(
        f"({i}) {c.name}: {c.sentence}." for i, c in enumerate(failures, 1)
    ) + " `strangler cdc check` lists every check.")
