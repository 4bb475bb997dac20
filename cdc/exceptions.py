"""Errors of the CDC package. Callers catch `CDCError`; the CLI prints it as FAILED."""

from __future__ import annotations


class CDCError(Exception):
    """Base of every error the CDC package raises on purpose."""


class MappingError(CDCError):
    """A row cannot be translated through the sync spec (a poison event: dead-lettered)."""


class SchemaChangedError(CDCError):
    """A legacy column the spec maps was dropped or retyped: the stream stops until the spec is fixed."""
