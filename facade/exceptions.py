"""Errors of the façade package. Callers catch `FacadeError`; the CLI prints it as FAILED."""

from __future__ import annotations


class FacadeError(Exception):
    """Base of every error the façade package raises on purpose."""
