"""Where shadow comparisons are kept: SQLAlchemy Core, a SQLite file by default, PostgreSQL too.

Per comparison: time, route, endpoint, status pair, latency pair, match flags (raw and with noise
removed), the differing paths with kinds; a few redacted sample pairs per endpoint and field; drop
counts. Everything written here has been redacted by the caller (`facade.shadow.redact`). Retention by
age, row count and size. `facade.shadow.writer.StoreWriter` batches writes off the request path.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import pathname2url

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from facade.config import ShadowStoreConfig
from facade.shadow.exceptions import ShadowStoreError

__all__ = [
    "ComparisonRecord",
    "DiffRecord",
    "DropRecord",
    "SampleRecord",
    "ShadowStore",
    "ShadowStoreError",
    "StoreData",
    "resolve_url",
]

log = logging.getLogger("strangler.shadow.store")

DEFAULT_URL = "sqlite:///.strangler/shadow.db"

metadata = sa.MetaData()

comparisons = sa.Table(
    "shadow_comparisons",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("endpoint", sa.String(500), nullable=False),
    sa.Column("source", sa.String(20), nullable=False),  # live | replay
    sa.Column("outcome", sa.String(20), nullable=False),  # compared | timeout | failed
    sa.Column("primary_status", sa.Integer, nullable=False),
    sa.Column("candidate_status", sa.Integer, nullable=True),
    sa.Column("primary_ms", sa.Float, nullable=True),
    sa.Column("candidate_ms", sa.Float, nullable=True),
    sa.Column("match", sa.Boolean, nullable=False),
    sa.Column("match_denoised", sa.Boolean, nullable=False),
    sa.Column("noise_probe", sa.Boolean, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
)

differences = sa.Table(
    "shadow_differences",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("comparison_id", sa.Integer, nullable=False, index=True),
    sa.Column("origin", sa.String(10), nullable=False),  # candidate | noise (primary vs primary)
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("field", sa.Text, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
)

samples = sa.Table(
    "shadow_samples",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("endpoint", sa.String(500), nullable=False),
    sa.Column("field", sa.Text, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("primary_value", sa.Text, nullable=True),
    sa.Column("candidate_value", sa.Text, nullable=True),
    sa.Column("primary_body", sa.Text, nullable=True),
    sa.Column("candidate_body", sa.Text, nullable=True),
)

drops = sa.Table(
    "shadow_drops",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("reason", sa.String(40), nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
)


@dataclass(frozen=True, slots=True)
class DiffRecord:
    path: str
    field: str
    kind: str
    origin: str = "candidate"  # or "noise": the primary differed from itself


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One redacted example of a difference, kept for a few requests per endpoint and field."""

    field: str
    kind: str
    path: str
    request: str
    primary_value: str | None
    candidate_value: str | None
    primary_body: str | None = None
    candidate_body: str | None = None


@dataclass(frozen=True, slots=True)
class ComparisonRecord:
    """One shadowed request: both answers' status and latency, and how they differed."""

    ts: float
    route: str
    endpoint: str
    primary_status: int
    candidate_status: int | None
    primary_ms: float | None
    candidate_ms: float | None
    match: bool
    match_denoised: bool
    noise_probe: bool = False
    outcome: str = "compared"
    source: str = "live"
    error: str | None = None
    differences: tuple[DiffRecord, ...] = ()
    samples: tuple[SampleRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class DropRecord:
    ts: float
    route: str
    reason: str
    count: int


@dataclass
class StoreData:
    """Rows read back for a report (plain dicts, newest last)."""

    comparisons: list[dict[str, Any]] = field(default_factory=list)
    differences: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    drops: list[dict[str, Any]] = field(default_factory=list)


class ShadowStore:
    """Comparison storage behind a SQLAlchemy URL (`sqlite:///path` or `postgresql://...`)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        retention: float = 7 * 86400.0,
        max_rows: int = 100_000,
        max_size: int | None = None,
        samples_per_field: int = 3,
        engine: Engine | None = None,
        read_only: bool = False,
    ) -> None:
        self.url = url
        self.retention = retention
        self.max_rows = max_rows
        self.max_size = max_size
        self.samples_per_field = samples_per_field
        self._sample_counts: dict[tuple[str, str], int] = {}
        self.read_only = read_only
        self.engine = engine or _engine(url, read_only=read_only)

    def create(self) -> None:
        # Several processes may create a new store at the same moment (the shadow workers of the
        # façade's workers, started by one reload): a table made by another between the check
        # and the CREATE fails this attempt, and the next one finds it.
        for attempt in range(3):
            try:
                metadata.create_all(self.engine)
                return
            except SQLAlchemyError as exc:
                if attempt == 2:
                    raise ShadowStoreError(f"cannot create the shadow tables at {_safe(self.url)}: {exc}") from exc

    def close(self) -> None:
        self.engine.dispose()

    def write(self, records: Sequence[ComparisonRecord], drop_records: Sequence[DropRecord] = ()) -> None:
        """Insert a batch in one transaction."""
        if not records and not drop_records:
            return
        with self.engine.begin() as conn:
            if records:
                # One multi-row INSERT ... RETURNING for the batch, ids in parameter order.
                ids = conn.execute(
                    comparisons.insert().returning(comparisons.c.id, sort_by_parameter_order=True),
                    [
                        {
                            "ts": r.ts,
                            "route": r.route,
                            "endpoint": r.endpoint,
                            "source": r.source,
                            "outcome": r.outcome,
                            "primary_status": r.primary_status,
                            "candidate_status": r.candidate_status,
                            "primary_ms": r.primary_ms,
                            "candidate_ms": r.candidate_ms,
                            "match": r.match,
                            "match_denoised": r.match_denoised,
                            "noise_probe": r.noise_probe,
                            "error": r.error,
                        }
                        for r in records
                    ],
                ).scalars().all()
                diff_rows = [
                    {"comparison_id": cid, "origin": d.origin, "path": d.path, "field": d.field, "kind": d.kind}
                    for cid, record in zip(ids, records)
                    for d in record.differences
                ]
                if diff_rows:
                    conn.execute(differences.insert(), diff_rows)
                sample_rows = [row for record in records for row in self._samples_to_keep(conn, record)]
                if sample_rows:
                    conn.execute(samples.insert(), sample_rows)
            if drop_records:
                conn.execute(drops.insert(), [{"ts": d.ts, "route": d.route, "reason": d.reason, "count": d.count} for d in drop_records])

    def _samples_to_keep(self, conn: sa.Connection, record: ComparisonRecord) -> list[dict[str, Any]]:
        rows = []
        for s in record.samples:
            key = (record.endpoint, s.field)
            if key not in self._sample_counts:
                self._sample_counts[key] = conn.execute(
                    sa.select(sa.func.count()).select_from(samples).where(samples.c.endpoint == record.endpoint, samples.c.field == s.field)
                ).scalar_one()
            if self._sample_counts[key] >= self.samples_per_field:
                continue
            self._sample_counts[key] += 1
            rows.append(
                {
                    "ts": record.ts,
                    "route": record.route,
                    "endpoint": record.endpoint,
                    "field": s.field,
                    "kind": s.kind,
                    "path": s.path,
                    "request": s.request,
                    "primary_value": s.primary_value,
                    "candidate_value": s.candidate_value,
                    "primary_body": s.primary_body,
                    "candidate_body": s.candidate_body,
                }
            )
        return rows

    def wants_sample(self, endpoint: str, field_name: str) -> bool:
        """Cheap hint for callers: False once this process knows the field has enough samples."""
        return self._sample_counts.get((endpoint, field_name), 0) < self.samples_per_field

    @classmethod
    def from_config(cls, config: ShadowStoreConfig, *, base: Path | None = None, read_only: bool = False) -> ShadowStore:
        """The store `routing.yaml`'s `shadow_store:` describes, with its retention limits; a relative
        SQLite path is taken from `base`, the directory of routing.yaml (see `resolve_url`)."""
        return cls(
            resolve_url(config.url, base), retention=config.retention, max_rows=config.max_rows, max_size=config.max_size, read_only=read_only
        )

    @classmethod
    def open(cls, url: str | None, config: ShadowStoreConfig | None = None, *, base: Path | None = None, read_only: bool = False) -> ShadowStore:
        """The store a command names: `url` as given (`--store`, relative to the current directory),
        else the one routing.yaml describes (relative to `base`, its directory), else the default."""
        if url is None and config is not None:
            return cls.from_config(config, base=base, read_only=read_only)
        return cls(url or DEFAULT_URL, read_only=read_only)

    def prune(self, now: float | None = None) -> int:
        """Apply retention by age, by row count and by size; returns the comparisons deleted."""
        now = time.time() if now is None else now
        cutoff = now - self.retention
        deleted = 0
        with self.engine.begin() as conn:
            old = sa.select(comparisons.c.id).where(comparisons.c.ts < cutoff)
            conn.execute(differences.delete().where(differences.c.comparison_id.in_(old)))
            deleted += conn.execute(comparisons.delete().where(comparisons.c.ts < cutoff)).rowcount or 0
            conn.execute(samples.delete().where(samples.c.ts < cutoff))
            conn.execute(drops.delete().where(drops.c.ts < cutoff))
            deleted += self._keep_newest(conn, self.max_rows)
            if self.max_size is not None:
                used = self._used_bytes(conn)
                if used is not None and used > self.max_size:
                    # Rows are about alike in size: keep the share of them that fits in 90 % of
                    # the limit, so the next batches do not cross it again at once.
                    total = conn.execute(sa.select(sa.func.count()).select_from(comparisons)).scalar_one()
                    deleted += self._keep_newest(conn, int(total * 0.9 * self.max_size / used))
        if deleted and self.max_size is not None and self.engine.dialect.name == "sqlite":
            raw = self.engine.raw_connection()  # give the freed pages back to the file system
            try:
                # The pragma frees a page per step, and sqlite3's execute() takes one step for a
                # statement without rows; executescript() runs it to the end.
                raw.driver_connection.executescript("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")
            finally:
                raw.close()
        self._sample_counts.clear()
        return deleted

    def _keep_newest(self, conn: sa.Connection, keep: int) -> int:
        """Delete all but the newest `keep` comparisons, with their differences and the older samples."""
        edge = conn.execute(sa.select(comparisons.c.id).order_by(comparisons.c.id.desc()).offset(keep).limit(1)).scalar_one_or_none()
        if edge is None:
            return 0
        conn.execute(differences.delete().where(differences.c.comparison_id <= edge))
        deleted = conn.execute(comparisons.delete().where(comparisons.c.id <= edge)).rowcount or 0
        oldest = conn.execute(sa.select(sa.func.min(comparisons.c.ts))).scalar_one_or_none()
        if oldest is not None:
            conn.execute(samples.delete().where(samples.c.ts < oldest))
        return deleted

    def size(self) -> int | None:
        """Bytes the store's tables hold (an estimate on PostgreSQL), or None where unknown."""
        with self.engine.connect() as conn:
            return self._used_bytes(conn)

    def _used_bytes(self, conn: sa.Connection) -> int | None:
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            page = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
            free = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
            return (pages - free) * page
        if dialect == "postgresql":
            # Deleted rows keep their space until VACUUM reuses it: count the live share only.
            names = [t.name for t in metadata.sorted_tables]
            return int(
                conn.execute(
                    sa.text(
                        "SELECT coalesce(sum(pg_total_relation_size(relid) * CASE WHEN n_live_tup + n_dead_tup > 0 "
                        "THEN n_live_tup::float / (n_live_tup + n_dead_tup) ELSE 1 END), 0) "
                        "FROM pg_stat_user_tables WHERE relname = ANY(:names)"
                    ),
                    {"names": names},
                ).scalar_one()
            )
        return None

    def empty_message(self) -> str:
        """What a reader says of a store without comparisons (one sentence with the fix)."""
        return (
            f"the shadow store at {_safe(self.url)} holds no comparisons yet; turn on shadow: for a route in routing.yaml "
            "and send traffic, or run `strangler shadow replay`, or pass the façade's store with --store or its routing.yaml with --config"
        )

    def routes(self) -> list[str]:
        """The route ids that have comparisons in the store, sorted (empty for a new store)."""
        try:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(comparisons.name):
                    return []
                return sorted(conn.execute(sa.select(comparisons.c.route).distinct()).scalars())
        except SQLAlchemyError as exc:
            raise ShadowStoreError(f"cannot read the shadow store at {_safe(self.url)}: {exc.__class__.__name__}; check --store") from exc

    def load(self, *, since: float | None = None, route: str | None = None) -> StoreData:
        """Everything recorded since `since` (epoch seconds), optionally for one route."""
        try:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(comparisons.name):
                    raise ShadowStoreError(self.empty_message())
                cond = []
                if since is not None:
                    cond.append(comparisons.c.ts >= since)
                if route is not None:
                    cond.append(comparisons.c.route == route)
                comp_q = sa.select(comparisons).where(*cond).order_by(comparisons.c.ts, comparisons.c.id)
                data = StoreData(comparisons=[dict(r._mapping) for r in conn.execute(comp_q)])
                ids = sa.select(comparisons.c.id).where(*cond).scalar_subquery()
                diff_q = sa.select(differences).where(differences.c.comparison_id.in_(ids)) if cond else sa.select(differences)
                data.differences = [dict(r._mapping) for r in conn.execute(diff_q)]
                scond = [c for c in ((samples.c.ts >= since) if since is not None else None, (samples.c.route == route) if route else None) if c is not None]
                data.samples = [dict(r._mapping) for r in conn.execute(sa.select(samples).where(*scond).order_by(samples.c.id))]
                dcond = [c for c in ((drops.c.ts >= since) if since is not None else None, (drops.c.route == route) if route else None) if c is not None]
                data.drops = [dict(r._mapping) for r in conn.execute(sa.select(drops).where(*dcond).order_by(drops.c.ts))]
                return data
        except SQLAlchemyError as exc:
            raise ShadowStoreError(
                f"cannot read the shadow store at {_safe(self.url)}: {exc.__class__.__name__}: {exc.args[0] if exc.args else exc}; "
                "check --store (a SQLAlchemy URL such as sqlite:///.strangler/shadow.db)"
            ) from exc


def resolve_url(url: str, base: Path | None) -> str:
    """`url` with a relative SQLite file path taken from `base` (None: the current directory).

    The façade and every command resolve `shadow_store.url` against the directory of the
    routing.yaml that names it, so they read and write the same file wherever they are started."""
    if base is None:
        return url
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - _engine reports a bad URL with the fix
        return url
    database = parsed.database
    if not parsed.drivername.startswith("sqlite") or not database or database == ":memory:" or database.startswith("file:"):
        return url
    if Path(database).is_absolute():
        return url
    return parsed.set(database=str(Path(base) / database)).render_as_string(hide_password=False)


def _safe(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for an error message
        return "<invalid url>"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: a report can read while the writer writes, and a commit appends to the log instead of
    # rewriting pages under a rollback journal. synchronous=NORMAL: a commit does not wait for
    # fsync (the database stays consistent; a power cut can lose the last batches, which are
    # statistics, not data). Together they make a batch commit several times cheaper.
    cursor = dbapi_connection.cursor()
    # Only a new, empty database takes this: pages freed by retention can then go back to the
    # file system (`PRAGMA incremental_vacuum`), so a size limit shrinks the file.
    cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _engine(url: str, *, read_only: bool = False) -> Engine:
    try:
        parsed = make_url(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises ArgumentError and friends
        raise ShadowStoreError(f"shadow store URL {url!r} is not a SQLAlchemy URL; write sqlite:///path/shadow.db or postgresql://user@host/db") from exc
    if parsed.drivername.startswith("sqlite"):
        on_disk = bool(parsed.database) and parsed.database != ":memory:"
        if on_disk and read_only:
            return _read_only_sqlite(Path(parsed.database))
        if on_disk:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
        if on_disk:
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    # A reader's transactions are read-only on the server: a report can never change the store.
    connect_args = {"options": "-c default_transaction_read_only=on"} if read_only and parsed.drivername.startswith("postgresql") else {}
    try:
        return sa.create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except Exception as exc:  # noqa: BLE001 - a missing driver, a bad option
        raise ShadowStoreError(f"cannot open shadow store {_safe(url)}: {exc}") from exc


def _read_only_sqlite(path: Path) -> Engine:
    """An engine that opens an existing SQLite file read-only: no directory, file or table is made."""
    if not path.is_file():
        raise ShadowStoreError(
            f"there is no shadow store at {str(path)!r}; pass --store with the façade's store URL, or --config with the "
            "routing.yaml it serves (a relative store path is taken from that file's directory)"
        )
    uri = f"file:{pathname2url(str(path.resolve()))}?mode=ro"
    return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30))
