"""Removing what a sync put on the source: its replication slot and publication (`cdc drop`),
and with `reset` the target's checkpoint, so the next `cdc run` copies everything again.
"""

from __future__ import annotations

import psycopg2

from cdc.database import one_line
from cdc.exceptions import CDCError
from cdc.slot import drop_publication, drop_slot
from cdc.spec import SyncSpec

__all__ = ["drop"]


def drop(spec: SyncSpec, *, terminate: bool = True, reset: bool = False) -> dict[str, bool]:
    """Remove the replication slot and publication of a spec from the source; with `reset`, also
    forget the target's checkpoint and row positions so the next `cdc run` copies everything again."""
    if not spec.source_url:
        raise CDCError(f"{spec.path}: no source database; give --source-url or set source.url in the spec")
    result = {
        "slot_dropped": drop_slot(spec.source_url, spec.slot_name, terminate=terminate),
        "publication_dropped": drop_publication(spec.source_url, spec.publication_name),
    }
    if reset:
        if not spec.target_url:
            raise CDCError(f"{spec.path}: --reset needs the target database; give --target-url or set target.url")
        try:
            conn = psycopg2.connect(spec.target_url)
            try:
                with conn, conn.cursor() as cur:
                    cur.execute("SELECT to_regclass('strangler.checkpoint') IS NOT NULL")
                    if cur.fetchone()[0]:
                        cur.execute("DELETE FROM strangler.checkpoint WHERE name = %s", (spec.name,))
                        cur.execute("DELETE FROM strangler.row_position WHERE target_table = ANY(%s)",
                                    ([t.target for t in spec.tables],))
                        cur.execute("DELETE FROM strangler.table_position WHERE name = %s", (spec.name,))
            finally:
                conn.close()
        except psycopg2.Error as exc:
            raise CDCError(f"cannot reset the target's checkpoint: {one_line(exc)}") from exc
        result["checkpoint_reset"] = True
    return result
