"""The schema window: this code runs against its own revisions from OLDEST_SCHEMA up, and against
a newer one whose migrations declared this code compatible (worker/ledger/schema_window.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.ledger.next_release import NEXT, next_release
from worker.ledger import schema_window
from worker.ledger.db import make_engine
from worker.ledger.migrate import head_revision, revision_of, scripts, upgrade


def _verdict(url: str) -> schema_window.Verdict:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return schema_window.judge(conn, scripts(), revision_of(conn))
    finally:
        engine.dispose()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


def test_the_head_fits(url: str) -> None:
    upgrade(url)
    verdict = _verdict(url)
    assert verdict.ok and verdict.revision == head_revision()


def test_a_database_one_additive_migration_ahead_fits(url: str, tmp_path: Path) -> None:
    """An old pod after the new release migrated, or a rollback image: still ready (was: the
    revision had to equal the head)."""
    upgrade(url, migrations=next_release(tmp_path, additive=True))
    verdict = _verdict(url)
    assert verdict.revision == NEXT
    assert verdict.ok, verdict


def test_a_database_one_contract_migration_ahead_does_not_fit(url: str, tmp_path: Path) -> None:
    upgrade(url, migrations=next_release(tmp_path, additive=False))
    verdict = _verdict(url)
    assert verdict.revision == NEXT
    assert not verdict.ok and "needs code from 9001" in verdict.reason


def test_a_newer_revision_without_a_record_does_not_fit(url: str, tmp_path: Path) -> None:
    """Migrated by something that did not record the window (plain `alembic upgrade`): unknown."""
    upgrade(url, migrations=next_release(tmp_path, additive=True))
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM control_state WHERE name = :n"), {"n": schema_window.STATE_KEY})
    engine.dispose()
    assert not _verdict(url).ok


def test_a_database_older_than_the_oldest_schema_does_not_fit(url: str) -> None:
    order = schema_window.chain(scripts())
    older = order[order.index(schema_window.OLDEST_SCHEMA) - 1]
    upgrade(url, revision=older)
    verdict = _verdict(url)
    assert not verdict.ok and "oldest this code needs" in verdict.reason


def test_an_empty_database_does_not_fit(url: str) -> None:
    make_engine(url).dispose()
    assert not _verdict(url).ok


def test_every_declaration_names_a_revision_at_or_before_its_own() -> None:
    """A declaration naming a later revision, or one that is not there, would be read as 'any code'."""
    s = scripts()
    order = schema_window.chain(s)
    assert schema_window.OLDEST_SCHEMA in order
    for rev in order:
        declared = getattr(s.get_revision(rev).module, schema_window.DECLARATION, rev)
        assert declared in order and order.index(declared) <= order.index(rev), rev
