"""Connections to a sync's two databases, the source (legacy) and the target (the service's store).

Both must be PostgreSQL: the source for logical replication, the target for COPY and the
checkpoint's transaction. A URL of another scheme is refused before anything is created, and a
failed connection is a `CDCError` that names the database (password masked) and the reason.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg2
import psycopg2.extensions

from cdc.exceptions import CDCError

__all__ = ["Connections", "check_url", "connect", "one_line", "safe_dsn"]

_SCHEMES = ("postgresql", "postgres")


def safe_dsn(dsn: str) -> str:
    """The URL with its password masked, for messages."""
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", dsn)


def one_line(exc: BaseException) -> str:
    """A driver's message on one line (libpq adds hint lines: "Is the server running ...?")."""
    return "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())


def check_url(dsn: str, role: str) -> str:
    """`dsn` when it can name a PostgreSQL database (a postgresql:// URL or libpq's key=value form)."""
    scheme, sep, _ = dsn.partition("://")
    if sep and scheme.lower() not in _SCHEMES:
        raise CDCError(
            f"the {role} database URL {safe_dsn(dsn)!r} is not PostgreSQL ({scheme}://); strangler's CDC reads "
            f"and writes PostgreSQL only: give postgresql://USER@HOST:PORT/DATABASE"
        )
    return dsn


def connect(dsn: str, role: str = "source") -> psycopg2.extensions.connection:
    """A plain connection to the `role` database ("source" or "target")."""
    check_url(dsn, role)
    try:
        return psycopg2.connect(dsn)
    except psycopg2.Error as exc:
        raise CDCError(f"cannot connect to the {role} database {safe_dsn(dsn)}: {one_line(exc)}") from exc


class Connections:
    """Connections opened once and reused, by URL and mode: a caller that must not wait for a new
    server process inside a time-critical stretch (the write switch's pause) opens them before it.

    `get(url, autocommit=...)` opens on first use; an autocommit connection serves polls and
    single statements, a transactional one `with conn:` blocks. `close()` closes all of them.
    """

    def __init__(self, role: str = "source") -> None:
        self.role = role
        self._open: dict[tuple[str, bool], psycopg2.extensions.connection] = {}

    def get(self, url: str, *, autocommit: bool = False, role: str | None = None) -> psycopg2.extensions.connection:
        key = (url, autocommit)
        conn = self._open.get(key)
        if conn is None or conn.closed:
            conn = connect(url, role or self.role)
            conn.autocommit = autocommit
            self._open[key] = conn
        return conn

    def check(self) -> None:
        """Reopen any connection that no longer answers (`SELECT 1`), so its next use does not fail."""
        for key, conn in list(self._open.items()):
            try:
                if conn.closed:
                    raise psycopg2.InterfaceError("closed")
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                if not conn.autocommit:
                    conn.rollback()
            except psycopg2.Error:
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
                del self._open[key]
                self.get(key[0], autocommit=key[1])

    def close(self) -> None:
        for conn in self._open.values():
            try:
                conn.close()
            except psycopg2.Error:
                pass
        self._open.clear()

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
