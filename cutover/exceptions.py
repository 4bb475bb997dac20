"""Errors of the cutover package. Callers catch `CutoverError`; the CLI prints it as FAILED."""

from __future__ import annotations


class CutoverError(Exception):
    """Base of every error the cutover package raises on purpose."""


class PlanError(CutoverError):
    """The plan file is invalid; `problems` holds every `file:line:col: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = self.problems[0] if count == 1 else f"{count} problems in the plan:\n" + "\n".join(self.problems)
        super().__init__(head)


class LeaseHeld(CutoverError):
    """Another runner holds the plan's lease: this one must not act."""


class SourceUnreachable(CutoverError):
    """A gate's source (a façade replica, a database, the shadow store) cannot be read."""
