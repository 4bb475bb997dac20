"""What the shadow addon and the shadow worker share: the job types, counters and the sink seam.

The façade's hooks build a `RawJob` (a plain tuple: cheap to make and to pickle), the sink hands
it with the route's `RouteInfo` to an engine (in-process or in the worker process), and
`build_job` expands it there into a `ShadowJob`. Neither side imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from facade.config import ShadowConfig
from facade.routing import canonical_path
from facade.shadow.compare import Reply
from facade.shadow.redact import Redactor

__all__ = [
    "HOP_BY_HOP", "SAFE_METHODS", "SHADOW_HEADER", "RawJob", "RouteInfo", "ShadowCounters", "ShadowJob", "ShadowSink",
    "build_job", "header_map",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length",
     b"proxy-authenticate", b"proxy-authorization"}
)
SHADOW_HEADER = (b"x-strangler-shadow", b"1")


@dataclass
class ShadowCounters:
    """Live numbers per route, as shown at `/_strangler/shadow`."""

    sampled: int = 0
    sent: int = 0
    compared: int = 0
    matched: int = 0
    mismatched: int = 0
    noise_probes: int = 0
    recorded: int = 0
    record_dropped: int = 0
    record_lost: int = 0
    dropped_queue_full: int = 0
    dropped_body_too_large: int = 0
    dropped_cpu_budget: int = 0
    skipped_writes: int = 0
    skipped_primary_failed: int = 0
    timed_out: int = 0
    failed: int = 0
    compare_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sampled": self.sampled,
            "sent": self.sent,
            "compared": self.compared,
            "matched": self.matched,
            "mismatched": self.mismatched,
            "noise_probes": self.noise_probes,
            "recorded": self.recorded,
            "record_dropped": self.record_dropped,
            "record_lost": self.record_lost,
            "dropped": {
                "queue_full": self.dropped_queue_full,
                "body_too_large": self.dropped_body_too_large,
                "cpu_budget": self.dropped_cpu_budget,
            },
            "skipped_writes": self.skipped_writes,
            "skipped_primary_failed": self.skipped_primary_failed,
            "timed_out": self.timed_out,
            "failed": self.failed,
            "compare_errors": self.compare_errors,
        }


@dataclass(slots=True)
class ShadowJob:
    """Everything a worker needs to mirror one request and judge the answer (picklable)."""

    route: str
    endpoint: str
    method: str
    request_line: str
    headers: list[tuple[bytes, bytes]]  # lower-case names, as sent
    body: bytes
    candidate_url: str
    primary_url: str
    primary: Reply
    primary_ms: float | None
    noise: bool


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """What the workers need to know about a shadowed route (sent once per route version)."""

    route_id: str
    config: ShadowConfig
    segments: tuple[str, ...]
    candidate_base: str


RawJob = tuple[str, bytes, bytes, list[tuple[bytes, bytes]], bytes, int, list[tuple[bytes, bytes]], bytes, bool, "float | None", bool, str]
"""(method, raw path, query, request headers, request body, status, response headers, response
body, response truncated, duration s, noise probe, primary base URL): only what the hooks have,
so handing a request over costs a tuple and a pickle on the façade's loop."""


def build_job(info: RouteInfo, raw: RawJob) -> ShadowJob:
    """Expand a hook's raw tuple into a job (decoding, canonical endpoint, redacted request line)."""
    method, raw_path, raw_query, req_headers, body, status, resp_headers, resp_body, truncated, duration, noise, primary_base = raw
    path = raw_path.decode("latin-1")
    query = raw_query.decode("latin-1")
    target = path + ("?" + query if query else "")
    # The façade's header names are lower-case already; the pairs stay bytes to the wire.
    headers = [(k, v) for k, v in req_headers if k not in HOP_BY_HOP and k != SHADOW_HEADER[0]]
    headers.append(SHADOW_HEADER)
    redacted_query = Redactor.build(body_fields=info.config.redact.body_fields).query(query) if query else ""
    return ShadowJob(
        route=info.route_id,
        endpoint=f"{method} {canonical_path(info.segments, path)}",
        method=method,
        request_line=f"{method} {path}" + ("?" + redacted_query if query else ""),
        headers=headers,
        body=body,
        candidate_url=info.candidate_base.rstrip("/") + target,
        primary_url=primary_base.rstrip("/") + target,
        primary=Reply(status, header_map([(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in resp_headers]), resp_body, truncated),
        primary_ms=duration * 1000 if duration is not None else None,
        noise=noise,
    )


class ShadowSink(Protocol):
    """Where the hooks hand finished requests: the engine in-process, or the worker process."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def submit(self, info: RouteInfo, raw: RawJob) -> None: ...

    def drop(self, route_id: str, reason: str) -> None: ...

    def record(self, file: str, redact_headers: Sequence[str], redact_fields: Sequence[str], captured: dict[str, Any]) -> bool:
        """Redact one captured exchange and append it to `file` (`facade.shadow.recorder.Recordings.add`);
        False when it cannot be taken (the worker is gone or far behind)."""
        ...

    def refuse(self, route_id: str) -> bool:
        """Whether a request just sampled for `route_id` is dropped at once (counted by the sink),
        before anything of it is captured."""
        ...

    def counters(self) -> dict[str, dict[str, Any]]: ...

    def store_stats(self) -> dict[str, int] | None: ...


def header_map(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in pairs:
        out[k] = out[k] + ", " + v if k in out else v
    return out
