"""Errors of the sample monolith."""

from __future__ import annotations


class MonolithError(Exception):
    """A known failure of the monolith's commands (bad configuration, a database that is not ready)."""


class ApiError(MonolithError):
    """An HTTP error answered as JSON: `status` and the body to send (DRF-shaped)."""

    def __init__(self, status: int, body: dict[str, object]) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class NotFound(ApiError):
    """The requested object does not exist (404 `{"detail": ...}`)."""

    def __init__(self, detail: str = "Not found.") -> None:
        super().__init__(404, {"detail": detail})


class ValidationError(ApiError):
    """The request's data is invalid (400 `{"field": ["message", ...]}`)."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(400, dict(errors))
        self.errors = errors


class PermissionDenied(ApiError):
    """The caller has no session, or its user may not do this (403)."""

    def __init__(self, detail: str = "You do not have permission to perform this action.") -> None:
        super().__init__(403, {"detail": detail})


class Conflict(ApiError):
    """The request conflicts with the current state, e.g. not enough stock (409)."""

    def __init__(self, detail: str) -> None:
        super().__init__(409, {"detail": detail})
