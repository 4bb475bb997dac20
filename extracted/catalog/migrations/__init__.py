"""Alembic migrations of the catalog store (a package so that installs ship them)."""
