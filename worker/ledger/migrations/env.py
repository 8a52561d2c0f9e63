"""Alembic environment: the URL comes from the caller (worker.ledger.migrate) or the settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from worker.ledger import schema_window
from worker.ledger.models import metadata
from worker.settings import get_settings

config = context.config


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connectable = create_engine(_url(), poolclass=pool.NullPool)
    with connectable.connect() as connection:
        # batch mode lets ALTERs run on SQLite too
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
            # with the migrations, so a revision is never there without what it accepts
            revision = context.get_context().get_current_revision()
            schema_window.record(connection, context.script, revision)
        if connection.in_transaction():  # SQLite: no transactional DDL, so the block did not commit it
            connection.commit()
    connectable.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
