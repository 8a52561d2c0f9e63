"""Schema migrations (Alembic), run programmatically by `medic db upgrade` and `medic up`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from worker.ledger.db import ensure_database, make_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str, migrations: Path = MIGRATIONS) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head", migrations: Path = MIGRATIONS) -> None:
    """Create the database if it is missing, then migrate it to `revision` (`migrations`: another
    script directory, for tests that play a newer release)."""
    ensure_database(url)
    command.upgrade(alembic_config(url, migrations), revision)


def revision_of(conn: Connection) -> str | None:
    """The revision the connected database is at (None before the first migration)."""
    return MigrationContext.configure(conn).get_current_revision()


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return revision_of(conn)
    finally:
        engine.dispose()


def scripts() -> ScriptDirectory:
    """This code's migrations."""
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def head_revision() -> str | None:
    return scripts().get_current_head()
