"""One round trip per transition: row + event in one statement on PostgreSQL (two on SQLite),
no ping per checkout, async commit only where asked, and a write that survives a dead connection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.ledger.conftest import NewJob
from worker.clock import utcnow
from worker.ledger import db, queries, transitions
from worker.ledger.models import job_events
from worker.settings import get_settings
from worker.submit import JobRequest, build_row


@pytest.fixture
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(engine, "before_cursor_execute", record)


def _rows(n: int) -> list[dict[str, Any]]:
    s, now = get_settings(), utcnow()
    return [build_row(JobRequest("examples.echo", {"message": str(i)}), tenant="rt", s=s, now=now) for i in range(n)]


def test_create_and_claim_are_one_statement_each_on_postgresql(
    engine: sa.Engine, new_job: NewJob, statements: list[str]
) -> None:
    # Bug caught: the row and its event sent as two statements (two round trips) on PostgreSQL.
    expected = 1 if engine.dialect.name == "postgresql" else 2
    job = new_job()
    assert len(statements) == expected, statements
    statements.clear()
    with engine.begin() as conn:
        claimed = transitions.claim(conn, job.id, job.delivery_id, worker="w", pid=1, now=utcnow(), lease_s=5)
    assert claimed is not None and claimed.state == "running"
    assert len(statements) == expected, statements
    with engine.connect() as conn:
        events = queries.get_events(conn, job.id)
    assert [(e.to_state, e.attempt, e.delivery_id) for e in events] == [
        ("queued", 0, job.delivery_id),
        ("running", 1, job.delivery_id),
    ]


def test_a_batch_comes_back_in_order_with_one_event_per_job_in_id_order(engine: sa.Engine) -> None:
    rows = _rows(40)
    with engine.begin() as conn:
        created = transitions.create_jobs(conn, rows, actor="t", now=rows[0]["created_at"])
    assert [r.id for r in created] == [r["id"] for r in rows]
    with engine.connect() as conn:
        events = conn.execute(
            sa.select(job_events.c.id, job_events.c.job_id).where(job_events.c.job_id.in_([r["id"] for r in rows]))
        ).all()
    assert sorted(e.job_id for e in events) == sorted(r["id"] for r in rows)  # one each, none twice
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)


def test_rerunning_a_create_after_a_lost_connection_duplicates_nothing(engine: sa.Engine) -> None:
    # Bug caught: db.write re-runs a create whose first try did commit -> a unique violation (500)
    # or a second event. On PostgreSQL the insert is ON CONFLICT (id) DO NOTHING + read back.
    if engine.dialect.name != "postgresql":
        pytest.skip("db.write re-runs only on PostgreSQL's autocommit path; SQLite is a transaction")
    rows = _rows(3)
    with engine.begin() as conn:
        first = transitions.create_jobs(conn, rows, actor="t", now=rows[0]["created_at"])
    with engine.begin() as conn:
        again = transitions.create_jobs(conn, rows, actor="t", now=rows[0]["created_at"])
    assert [r.id for r in again] == [r.id for r in first]
    with engine.connect() as conn:
        n = conn.scalar(sa.select(sa.func.count()).where(job_events.c.job_id.in_([r["id"] for r in rows])))
    assert n == 3


def test_no_ping_round_trip_at_checkout(engine: sa.Engine) -> None:
    # Bug caught: pool_pre_ping, a SELECT 1 round trip before every transaction.
    if engine.dialect.name == "postgresql":
        assert not engine.pool._pre_ping


def test_async_commit_only_where_asked_and_only_for_that_statement(medic_env: dict[str, str]) -> None:
    setting = sa.text("SELECT current_setting('synchronous_commit')")
    assert db.write(lambda conn: conn.scalar(setting), sync_commit=False) == "off"
    assert db.write(lambda conn: conn.scalar(setting)) == "on"
    with db.connect() as conn:
        assert conn.scalar(setting) == "on"


def test_a_write_survives_killed_connections(medic_env: dict[str, str]) -> None:
    # Bug caught: a pooled connection killed by the server fails the next write (no pre-ping now).
    for _ in range(3):  # fill the pool with a few idle connections
        db.write(lambda conn: conn.scalar(sa.text("SELECT 1")))
    with db.get_engine().connect() as conn:
        mine = conn.scalar(sa.text("SELECT pg_backend_pid()"))
    with sa.create_engine(medic_env["MEDIC_DATABASE_URL"]).connect() as admin:
        killed = admin.scalar(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid = :pid"
            ),
            {"pid": mine},
        )
    assert killed == 1
    rows = _rows(1)
    created = db.write(lambda conn: transitions.create_jobs(conn, rows, actor="t", now=rows[0]["created_at"]))
    assert created[0].id == rows[0]["id"]
