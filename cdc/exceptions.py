"""Errors of the CDC package. Callers catch `CDCError`; the CLI prints it as FAILED."""

from __future__ import annotations


class CDCError(Exception):
    """Base of every error the CDC package raises on purpose."""
