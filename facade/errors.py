"""Errors on the way to an upstream, as the proxy core distinguishes them.

The upstream client translates its library's exceptions into these at its boundary. What
matters for retries is `reached`: False only when the request provably never got to the upstream
(the connection could not be made), so even a POST may be sent again.
"""

from __future__ import annotations

from facade.exceptions import FacadeError

__all__ = ["AdminTokenMissing", "ClientGone", "UpstreamConnectError", "UpstreamError", "UpstreamTimeout"]


class UpstreamError(FacadeError):
    """The upstream failed after the request may have reached it (reset, protocol error, ...)."""

    reason = "upstream_error"
    reached = True


class UpstreamConnectError(UpstreamError):
    """No connection to the upstream could be made: the request never left the façade."""

    reason = "upstream_unavailable"
    reached = False


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer (or stopped sending) within its timeout."""

    reason = "upstream_timeout"


class ClientGone(FacadeError):
    """The client disconnected while its request body was being forwarded."""


class AdminTokenMissing(FacadeError):
    """The admin API would be reachable from other hosts without a token."""
