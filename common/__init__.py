"""What every room of strangler shares, and nothing else: waiting on a condition with a deadline
(`common.waiting`), a private PostgreSQL cluster with `wal_level=logical` (`common.postgres`),
child processes that are stopped with their group (`common.processes`) and, in `common.yamlfile`,
loading a YAML file into a validated model with `file:line:col` problems. This package imports nothing of `facade`, `cdc`, `cutover` or `scripts`; each of them
may import it.
"""

from __future__ import annotations

from common.waiting import TimedOut, wait_until

__all__ = ["TimedOut", "wait_until"]
