from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.postgres import EmbeddedPostgres


@pytest.fixture(scope="session")
def pg() -> Iterator[EmbeddedPostgres]:
    """One private PostgreSQL cluster (wal_level=logical) for the whole test session."""
    data_dir = Path(tempfile.mkdtemp(prefix="strangler-test-pg-")) / "data"
    server = EmbeddedPostgres(data_dir, ephemeral=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        try:
            data_dir.parent.rmdir()
        except OSError:
            pass


@pytest.fixture
def database(pg: EmbeddedPostgres, request: pytest.FixtureRequest) -> str:
    """A fresh database on the session cluster, named after the test; returns its URL."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40] + "_" + uuid.uuid4().hex[:6]
    return pg.create_database(name)
