"""Errors of the extracted catalog service."""

from __future__ import annotations


class CatalogError(Exception):
    """A known failure of the catalog service's commands (bad configuration, unreachable database)."""


class ApiError(CatalogError):
    """An HTTP error answered as JSON: `status` and the body to send (same shapes as the monolith)."""

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
    """The caller has no valid session, or its user is not staff (403)."""

    def __init__(self, detail: str = "You do not have permission to perform this action.") -> None:
        super().__init__(403, {"detail": detail})


class Conflict(ApiError):
    """The write conflicts with the store's current state (409)."""

    def __init__(self, detail: str) -> None:
        super().__init__(409, {"detail": detail})


class SessionCheckUnavailable(ApiError):
    """The monolith, which owns sessions, could not be asked (503)."""

    def __init__(self, detail: str) -> None:
        super().__init__(503, {"detail": detail})
