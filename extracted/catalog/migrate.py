"""`python -m extracted.catalog migrate`: `alembic upgrade head` on the catalog store, programmatically."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.exc import OperationalError

from common.extras import missing_extra

try:
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory
except ImportError as exc:
    raise missing_extra("service", "the catalog store's migrations (extracted.catalog.migrate)", exc) from exc

from extracted.catalog.db import check_url
from extracted.catalog.exceptions import CatalogError

ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"


def alembic_config(database_url: str) -> Config:
    """The Alembic configuration of the store, bound to `database_url` (works from any cwd)."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = check_url(database_url)
    return config


def head_revision() -> str:
    """The newest revision the migrations define."""
    head = ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()
    assert head is not None
    return head


def migrate(database_url: str, revision: str = "head") -> str:
    """Upgrade the store at `database_url` to `revision`; return the head revision."""
    try:
        command.upgrade(alembic_config(database_url), revision)
    except OperationalError as exc:
        raise CatalogError(f"cannot migrate the catalog store at {database_url}: {exc.orig}") from exc
    return head_revision()
