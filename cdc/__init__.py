"""Change data capture: legacy PostgreSQL tables kept copied into an extracted service's store.

The journey of a change, module by module: `slot` (publication and replication slot) →
`replication` (the walsender connection) → `pgoutput` (sans-io decoder) → `capture` (change
events in batches, heartbeats) → `transport` (in process) or `kafka` (Debezium-compatible topics;
`debezium` parses what Debezium Connect writes) → `mapping` (the spec's anti-corruption layer) →
`apply` (idempotent apply, checkpoint in the same transaction, dead letters in `deadletter`).
`fence` takes positions in the source's WAL and waits for an applier to pass them, and
`ownership` switches column ownership from such a position in a running applier (the write
cutover; a `direction: reverse` spec streams the service's store back into the legacy tables).
`preflight` checks what a run needs (`cdc check`), `dryrun` tries the snapshot on a sample,
`snapshot` copies the tables first, `relations` checks the legacy tables against the spec on every
start, `pipeline` runs the whole of it (`cdc run`), `status`, `verify` and `teardown` serve the
other commands, `eventfile` applies a file of events, `database` opens the two connections.

The names below are the package's API, each imported on first use (`common.lazy`), so `import
cdc.exceptions` stays light; `cdc.kafka` is imported on its own (confluent-kafka is needed only
by the distributed mode).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common.lazy import exports

if TYPE_CHECKING:
    from cdc.apply import Applier, ApplyError, ApplyResult, Checkpoint
    from cdc.dryrun import DryRunResult, dry_run
    from cdc.eventfile import apply_file, read_events
    from cdc.events import ChangeEvent, Column, Source
    from cdc.exceptions import CDCError, MappingError, SchemaChangedError
    from cdc.fence import FenceTimeout, applied_lsn, emit_fence, wait_applied
    from cdc.ownership import ownership_state, set_ownership
    from cdc.pipeline import RunStats, prepare, run
    from cdc.preflight import PreflightError, PreflightResult, preflight
    from cdc.relations import check_relations
    from cdc.snapshot import copy_pipe, snapshot_tables
    from cdc.spec import SyncSpec, load_spec
    from cdc.status import SyncStatus, status
    from cdc.teardown import drop
    from cdc.verify import VerifyResult, verify

__getattr__, __dir__ = exports(__name__, {
    "cdc.apply": "Applier ApplyError ApplyResult Checkpoint",
    "cdc.dryrun": "DryRunResult dry_run",
    "cdc.eventfile": "apply_file read_events",
    "cdc.events": "ChangeEvent Column Source",
    "cdc.exceptions": "CDCError MappingError SchemaChangedError",
    "cdc.fence": "FenceTimeout applied_lsn emit_fence wait_applied",
    "cdc.ownership": "ownership_state set_ownership",
    "cdc.pipeline": "RunStats prepare run",
    "cdc.preflight": "PreflightError PreflightResult preflight",
    "cdc.relations": "check_relations",
    "cdc.snapshot": "copy_pipe snapshot_tables",
    "cdc.spec": "SyncSpec load_spec",
    "cdc.status": "SyncStatus status",
    "cdc.teardown": "drop",
    "cdc.verify": "VerifyResult verify",
})

__all__ = [
    "Applier",
    "ApplyError",
    "ApplyResult",
    "CDCError",
    "ChangeEvent",
    "Checkpoint",
    "Column",
    "DryRunResult",
    "FenceTimeout",
    "MappingError",
    "PreflightError",
    "PreflightResult",
    "RunStats",
    "SchemaChangedError",
    "Source",
    "SyncSpec",
    "SyncStatus",
    "VerifyResult",
    "applied_lsn",
    "apply_file",
    "check_relations",
    "copy_pipe",
    "drop",
    "dry_run",
    "emit_fence",
    "load_spec",
    "ownership_state",
    "preflight",
    "prepare",
    "read_events",
    "run",
    "set_ownership",
    "snapshot_tables",
    "status",
    "verify",
    "wait_applied",
]
