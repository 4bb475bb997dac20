"""Connections to a sync's two databases, the source (legacy) and the target (the service's store).

Both must be PostgreSQL: the source for logical replication, the target for COPY and the
checkpoint's transaction. A URL of another scheme is refused before anything is created, and a
failed connection is a `CDCError` that names the database (password masked) and the reason.
"""

from __future__ import annotations

import re

import psycopg2
import psycopg2.extensions

from cdc.exceptions import CDCError

__all__ = ["check_url", "connect", "one_line", "safe_dsn"]

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
