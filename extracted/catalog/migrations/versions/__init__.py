"""Revisions of the catalog store."""
