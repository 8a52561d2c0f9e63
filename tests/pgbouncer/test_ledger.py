"""The ledger calls that depend on what a server session keeps, in this process, through
PgBouncer in transaction mode: prepared statements left on (the documented fallback), the
dispatcher's keyed limits under its transaction-scoped advisory locks (imported from
tests/ledger/test_dispatch.py), and the schedule fire's compare-and-set raced by eight threads
(imported from tests/control/test_fire.py, on a ledger of this module's own)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tests.control.test_fire import _empty, test_racing_runs_fire_and_count_each_time_once
from tests.ledger.make import a_new_job
from tests.ledger.test_dispatch import test_a_keys_limit_is_never_exceeded_and_a_freed_slot_lets_exactly_the_next_go
from worker.ledger import db, prepared, transitions
from worker.ledger.db import make_engine
from worker.ledger.models import jobs

pytestmark = pytest.mark.usefixtures("private_ledger")

__all__ = [
    "_empty",
    "test_a_keys_limit_is_never_exceeded_and_a_freed_slot_lets_exactly_the_next_go",
    "test_racing_runs_fire_and_count_each_time_once",
]


@pytest.fixture
def engine(private_ledger: dict[str, str]) -> Iterator[sa.Engine]:
    """tests/ledger/conftest.py's `engine`, PostgreSQL only, through the pooler."""
    eng = make_engine(private_ledger["MEDIC_DATABASE_URL"])
    yield eng
    eng.dispose()


def test_prepared_statements_left_on_behind_the_pooler_are_given_up_and_every_write_lands(
    private_ledger: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Given MEDIC_DB_PREPARED_STATEMENTS left on and several client connections through the pooler,
    When they write in turn (each PREPARE and EXECUTE may land on another server session),
    Then the first sign (a statement missing, or prepared twice on one server) turns preparing off
    with the log line naming the setting, and every write still lands exactly once."""
    monkeypatch.setattr(prepared, "_pooler_seen", False)
    monkeypatch.setenv("MEDIC_DB_PREPARED_STATEMENTS", "true")
    from worker.settings import reset_settings

    reset_settings()
    eng = make_engine(private_ledger["MEDIC_DATABASE_URL"], pool_size=4)
    monkeypatch.setattr(db, "get_engine", lambda: eng)
    news = [a_new_job(tenant="prepared-on") for _ in range(40)]
    caplog.set_level(logging.ERROR, logger=prepared.__name__)
    try:
        conns = [eng.connect() for _ in range(4)]  # four client connections, written through in turn
        for conn in conns:
            conn.close()
        for new in news:
            db.write(lambda conn, new=new: transitions.create_jobs(conn, [new], actor="t", now=new.created_at))
            if prepared._pooler_seen:
                break
        assert prepared._pooler_seen, "40 writes through the pooler and no prepared statement went missing"
        assert "MEDIC_DB_PREPARED_STATEMENTS=false" in caplog.text
        for new in news:  # unprepared from now on; re-writing the first ones inserts nothing twice
            db.write(lambda conn, new=new: transitions.create_jobs(conn, [new], actor="t", now=new.created_at))
        with db.connect() as conn:
            tenant_rows = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.tenant == "prepared-on")
            assert conn.scalar(tenant_rows) == len(news)
    finally:
        eng.dispose()
        reset_settings()
