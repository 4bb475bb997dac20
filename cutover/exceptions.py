"""Errors of the cutover package. Callers catch `CutoverError`; the CLI prints it as FAILED."""

from __future__ import annotations

from common.yamlfile import FileError


class CutoverError(Exception):
    """Base of every error the cutover package raises on purpose."""


class PlanError(CutoverError, FileError):
    """The plan file is invalid; `problems` holds every `file:line:col: message`."""


class LeaseHeld(CutoverError):
    """Another runner holds the plan's lease: this one must not act."""


class SourceUnreachable(CutoverError):
    """A gate's source (a façade replica, a database, the shadow store) cannot be read."""
