"""The run's state, folded from the journal: a pure function of its entries.

The runner never keeps state of its own between decisions: it writes an entry, then acts, and
on every turn (and after a crash) it folds the journal again. `status` shows the same fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cutover.journal import Entry

__all__ = ["REQUESTS", "RunState", "fold"]

REQUESTS = ("pause", "resume", "approve", "abort", "rollback")


@dataclass
class RunState:
    """Where a plan's run stands according to its journal."""

    position: int = -1  # index of the step in force (-1: none yet)
    passed: int = -1  # index of the last step whose gates passed
    status: str = "new"  # new | running | soaking | paused | awaiting_approval | rolled_back | aborted | done
    intent: Entry | None = None  # a change written but not yet seen served
    step_since: float | None = None  # when the step in force was served by every replica
    file_hash: str | None = None  # the routing file's hash the journal explains
    weight: float = 0.0
    shadow: float | None = None
    paused_before: str = ""  # the status a pause interrupted
    reason: str = ""
    last_verify: tuple[float, bool, str] | None = None
    last_reading: dict[str, Any] | None = None
    requests: list[Entry] = field(default_factory=list)  # operator requests not acted on yet
    history: list[Entry] = field(default_factory=list)  # intents, applied, decisions: the summary

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position, "passed": self.passed, "status": self.status,
            "intent": self.intent.as_dict() if self.intent else None, "step_since": self.step_since,
            "file_hash": self.file_hash, "weight": self.weight, "shadow": self.shadow, "reason": self.reason,
            "last_verify": list(self.last_verify) if self.last_verify else None, "last_reading": self.last_reading,
            "open_requests": [entry.as_dict() for entry in self.requests],
        }


def fold(entries: Sequence[Entry]) -> RunState:
    """The state after `entries`, oldest first."""
    state = RunState()
    handled: set[int] = set()
    for entry in entries:
        detail = entry.detail
        request = detail.get("request")
        if isinstance(request, int):
            handled.add(request)
        kind = entry.kind
        if kind.startswith("request."):
            state.requests.append(entry)
        elif kind == "run.start":
            if state.file_hash is None or state.status in ("new", "rolled_back", "aborted"):
                state.file_hash = entry.file_hash
                state.weight = float(entry.weight or 0.0)
                state.shadow = detail.get("shadow")
            if state.status in ("new", "rolled_back", "aborted", "running"):
                state.status = "running"
        elif kind == "intent":
            state.intent = entry
            state.history.append(entry)
        elif kind == "applied":
            state.intent = None
            state.position = int(entry.step if entry.step is not None else -1)
            state.weight = float(entry.weight or 0.0)
            state.shadow = detail.get("shadow")
            state.file_hash = entry.file_hash
            state.step_since = entry.at
            why = detail.get("why", "advance")
            if why == "advance":
                state.status = "soaking"
            else:
                state.passed = state.position
                state.status = "aborted" if why == "abort" else "rolled_back"
            state.history.append(entry)
        elif kind == "decision":
            state.last_reading = detail
            state.history.append(entry)
            if detail.get("decision") == "advance":
                state.passed = state.position
                state.status = "running"
        elif kind == "soak":
            state.last_reading = detail
        elif kind == "paused":
            if state.status != "paused":
                state.paused_before = state.status
            state.status = "paused"
            state.reason = str(detail.get("reason", ""))
            state.history.append(entry)
        elif kind == "resumed":
            state.status = state.paused_before or "running"
            state.reason = ""
        elif kind == "adopted":
            state.file_hash = entry.file_hash
            state.weight = float(entry.weight or 0.0)
            state.shadow = detail.get("shadow")
            state.history.append(entry)
        elif kind == "awaiting_approval":
            state.position = int(entry.step or 0)
            state.step_since = entry.at
            state.status = "awaiting_approval"
            state.history.append(entry)
        elif kind == "approved":
            state.passed = state.position
            state.status = "running"
            state.history.append(entry)
        elif kind == "done":
            state.status = "done"
            state.history.append(entry)
        elif kind == "verify":
            state.last_verify = (entry.at, bool(detail.get("identical")), str(detail.get("summary", "")))
    state.requests = [entry for entry in state.requests if entry.id not in handled]
    return state
