"""Errors of the shadow package. Callers catch `ShadowError` (a `FacadeError`); the CLI prints it as FAILED."""

from __future__ import annotations

from facade.exceptions import FacadeError

__all__ = [
    "CompareError", "RecorderError", "ReplayError", "ReportError", "ShadowError", "ShadowFailed", "ShadowSendError", "ShadowStoreError",
]


class ShadowError(FacadeError):
    """Base of every error the shadow package raises on purpose."""


class CompareError(ShadowError):
    """A comparison rule cannot be used (for example an invalid regular expression)."""


class ShadowSendError(ShadowError):
    """A mirrored request failed (connection refused, reset, protocol error)."""


class ShadowStoreError(ShadowError):
    """The shadow store cannot be opened or read (also: it does not exist, for a reader)."""


class RecorderError(ShadowError):
    """A traffic file cannot be read."""


class ReplayError(ShadowError):
    """Replay cannot start: an unknown upstream, an unreadable file, a bad option."""


class ReportError(ShadowError):
    """A report option cannot be understood, or there is nothing to report on."""


class ShadowFailed(ShadowError):
    """The candidate fails the `--fail-over` gate: too many mismatches or unanswered shadows, or none compared."""
