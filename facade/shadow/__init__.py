"""Shadow traffic: mirror a sample of a route's requests to a candidate, compare, record, report.

An addon of the façade (`ShadowAddon`), composed where the façade is started; the façade core
imports nothing of this package. The parts, one module each:

- `addon`: the request hooks (sampling, bounded capture) and `configure(table)` on every reload;
  `worker`: the worker process they hand jobs to; `jobs`: the types both sides share;
  `engine`: queues, mirroring, comparing, storing; `client`: the mirrored request.
- `judge`, `compare`, `rules`, `jsonequal`, `noise`: the pure comparison core; `redact`: what never
  reaches the store or a traffic file; `recorder`: traffic files; `store` and `writer`: the comparison store.
- `report` and `render`: comparison reports; `gate`: the `--fail-over` verdict; `replay`:
  offline replay of recorded traffic.

Redaction (`facade.shadow.redact`) is here because the recorder and the store are its only users;
recorded traffic is read by other commands through `facade.shadow.recorder`.
"""

from __future__ import annotations

from facade.shadow.addon import ShadowAddon, sample_bucket
from facade.shadow.compare import Comparison, Difference, DiffKind, Reply, compare
from facade.shadow.engine import ShadowEngine
from facade.shadow.exceptions import (
    CompareError,
    RecorderError,
    ReplayError,
    ReportError,
    ShadowError,
    ShadowFailed,
    ShadowSendError,
    ShadowStoreError,
)
from facade.shadow.gate import check, gate, parse_rate
from facade.shadow.judge import RouteRules, failure_record, judge, route_rules
from facade.shadow.recorder import RecordedExchange, TrafficRecorder, read_traffic
from facade.shadow.redact import Redactor
from facade.shadow.render import render, write_report
from facade.shadow.replay import ReplaySummary, run_replay
from facade.shadow.report import Report, build_report, make_report, parse_since
from facade.shadow.rules import CompareRules
from facade.shadow.store import ComparisonRecord, ShadowStore
from facade.shadow.writer import StoreWriter

__all__ = [
    "CompareError",
    "CompareRules",
    "Comparison",
    "ComparisonRecord",
    "DiffKind",
    "Difference",
    "RecordedExchange",
    "RecorderError",
    "Redactor",
    "ReplayError",
    "ReplaySummary",
    "Reply",
    "Report",
    "ReportError",
    "RouteRules",
    "ShadowAddon",
    "ShadowEngine",
    "ShadowError",
    "ShadowFailed",
    "ShadowSendError",
    "ShadowStore",
    "ShadowStoreError",
    "StoreWriter",
    "TrafficRecorder",
    "build_report",
    "check",
    "compare",
    "failure_record",
    "gate",
    "judge",
    "make_report",
    "parse_rate",
    "parse_since",
    "read_traffic",
    "render",
    "route_rules",
    "run_replay",
    "sample_bucket",
    "write_report",
]
