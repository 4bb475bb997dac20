from __future__ import annotations

import psycopg2

from common.postgres import EmbeddedPostgres


def test_embedded_cluster_has_logical_replication(pg: EmbeddedPostgres) -> None:
    conn = psycopg2.connect(pg.url())
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW wal_level")
            assert cur.fetchone() == ("logical",)
    finally:
        conn.close()


def test_create_database_returns_usable_url(database: str) -> None:
    conn = psycopg2.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            (name,) = cur.fetchone()
            assert database.endswith("/" + name)
    finally:
        conn.close()
