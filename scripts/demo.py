"""`strangler demo`: the migration journey on the embedded default."""

from __future__ import annotations


def demo() -> None:
    """Run the whole journey on the embedded PostgreSQL."""
