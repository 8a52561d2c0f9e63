"""One round trip per transition: row + event in one statement on PostgreSQL (two on SQLite),
no ping per checkout, async commit only where asked, and a write that survives a dead connection."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.ledger.conftest import NewJob
from tests.ledger.make import a_new_job
from worker.clock import utcnow
from worker.ledger import db, prepared, queries, transitions
from worker.ledger.db import make_engine
from worker.ledger.models import job_events
from worker.ledger.records import NewJob as NewJobRecord

# The session limits (db.SessionLimits) ride in front of a transaction's first statement, in its
# round trip: left out, so that each recorded statement is one round trip's own work.


@pytest.fixture
def statements(engine: sa.Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        seen.append(db.as_written(statement))

    sa.event.listen(engine, "before_cursor_execute", record)
    yield seen
    sa.event.remove(engine, "before_cursor_execute", record)


def _rows(n: int) -> list[NewJobRecord]:
    now = utcnow()
    return [a_new_job("rt", args={"message": str(i)}, created_at=now) for i in range(n)]


def _per_call(statements: list[str]) -> list[str]:
    """The statements sent for each call, leaving out the PREPARE a connection sends once."""
    return [s for s in statements if not s.startswith("PREPARE ")]


def test_create_and_claim_are_one_statement_each_on_postgresql(
    engine: sa.Engine, new_job: NewJob, statements: list[str]
) -> None:
    # Bug caught: the row and its event sent as two statements (two round trips) on PostgreSQL.
    expected = 1 if engine.dialect.name == "postgresql" else 2
    job = new_job()
    assert len(_per_call(statements)) == expected, statements
    statements.clear()
    with engine.begin() as conn:
        claimed = transitions.claim(conn, job.id, job.delivery_id, worker="w", pid=1, now=utcnow(), lease_s=5)
    assert claimed is not None and claimed.state == "running"
    assert len(_per_call(statements)) == expected, statements
    with engine.connect() as conn:
        events = queries.get_events(conn, job.id)
    assert [(e.to_state, e.attempt, e.delivery_id) for e in events] == [
        ("queued", 0, job.delivery_id),
        ("running", 1, job.delivery_id),
    ]


def test_a_batch_comes_back_in_order_with_one_event_per_job_in_id_order(engine: sa.Engine) -> None:
    rows = _rows(40)
    with engine.begin() as conn:
        created = transitions.create_jobs(conn, rows, actor="t", now=rows[0].created_at)
    assert [r.id for r in created] == [r.id for r in rows]
    with engine.connect() as conn:
        events = conn.execute(
            sa.select(job_events.c.id, job_events.c.job_id).where(job_events.c.job_id.in_([r.id for r in rows]))
        ).all()
    assert sorted(e.job_id for e in events) == sorted(r.id for r in rows)  # one each, none twice
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids)


def test_rerunning_a_create_after_a_lost_connection_duplicates_nothing(engine: sa.Engine) -> None:
    # Bug caught: db.write re-runs a create whose first try did commit -> a unique violation (500)
    # or a second event. On PostgreSQL the insert is ON CONFLICT (id) DO NOTHING + read back.
    if engine.dialect.name != "postgresql":
        pytest.skip("db.write re-runs only on PostgreSQL's autocommit path; SQLite is a transaction")
    rows = _rows(3)
    with engine.begin() as conn:
        first = transitions.create_jobs(conn, rows, actor="t", now=rows[0].created_at)
    with engine.begin() as conn:
        again = transitions.create_jobs(conn, rows, actor="t", now=rows[0].created_at)
    assert [r.id for r in again] == [r.id for r in first]
    with engine.connect() as conn:
        n = conn.scalar(sa.select(sa.func.count()).where(job_events.c.job_id.in_([r.id for r in rows])))
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
    created = db.write(lambda conn: transitions.create_jobs(conn, rows, actor="t", now=rows[0].created_at))
    assert created[0].id == rows[0].id


def _claim_and_succeed(conn: sa.Connection, job: Any) -> Any:
    claimed = transitions.claim(conn, job.id, job.delivery_id, worker="w", pid=1, now=utcnow(), lease_s=5)
    assert claimed is not None
    return transitions.succeed(conn, job.id, job.delivery_id, {"n": 1}, actor="w:1", now=utcnow())


def test_hot_writes_are_prepared_once_per_connection(engine: sa.Engine, new_job: NewJob, statements: list[str]) -> None:
    # Bugs caught: the statement prepared again on every call (two round trips, no gain), or the
    # EXECUTE losing its types (the row comes back with str ids, a str result, naive datetimes).
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no PREPARE")
    first, second = new_job(), new_job()
    with engine.connect() as conn:
        statements.clear()
        _claim_and_succeed(conn, first)
        done = _claim_and_succeed(conn, second)
        conn.commit()
    prepares = [s for s in statements if s.startswith("PREPARE ")]
    executes = [s for s in statements if s.startswith("EXECUTE ")]
    assert len(prepares) == 2 and len(executes) == 4, statements  # claim and succeed, once each
    assert done.id == second.id and done.delivery_id == second.delivery_id  # uuid.UUID, as compared
    assert done.state == "succeeded" and done.result == {"n": 1} and done.finished_at.tzinfo is not None


def test_a_killed_connection_prepares_again_on_its_replacement(medic_env: dict[str, str]) -> None:
    # Bug caught: the "already prepared" mark outliving the server session it was made in: the
    # replacement connection would EXECUTE a statement it never prepared (an error per write).
    engine = make_engine(medic_env["MEDIC_DATABASE_URL"], pool_size=1)  # one idle connection: reused
    rows = _rows(2)
    try:
        with engine.connect() as conn:  # prepare the create on a connection, then kill its backend
            transitions.create_jobs(conn, rows[:1], actor="t", now=rows[0].created_at)
            conn.commit()
            mine = conn.scalar(sa.text("SELECT pg_backend_pid()"))
        with sa.create_engine(medic_env["MEDIC_DATABASE_URL"]).connect() as admin:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": mine})  # waits for the exit
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT pg_backend_pid()")) != mine  # replaced at checkout
            created = transitions.create_jobs(conn, rows[1:], actor="t", now=rows[1].created_at)
            conn.commit()
    finally:
        engine.dispose()
    assert created[0].id == rows[1].id


def test_prepared_statements_can_be_turned_off(
    engine: sa.Engine, new_job: NewJob, statements: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bug caught: MEDIC_DB_PREPARED_STATEMENTS=false ignored (a PgBouncer in transaction mode
    # would then fail writes with "prepared statement does not exist").
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no PREPARE")
    from worker.settings import reset_settings

    monkeypatch.setenv("MEDIC_DB_PREPARED_STATEMENTS", "false")
    reset_settings()
    try:
        job = new_job()
        with engine.connect() as conn:
            done = _claim_and_succeed(conn, job)
            conn.commit()
    finally:
        monkeypatch.delenv("MEDIC_DB_PREPARED_STATEMENTS")
        reset_settings()
    assert done.state == "succeeded"
    assert not [s for s in statements if s.startswith(("PREPARE ", "EXECUTE "))], statements


def test_a_write_switches_no_isolation_level(medic_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Bug caught: db.write through execution_options(isolation_level="AUTOCOMMIT"): psycopg2 then
    # sends SET default_transaction_isolation on every checkout, a second round trip per write.
    engine = db.get_engine()
    calls: list[Any] = []
    original = engine.dialect.set_isolation_level
    spy = lambda c, level: (calls.append(level), original(c, level))  # noqa: E731
    monkeypatch.setattr(engine.dialect, "set_isolation_level", spy)
    for _ in range(3):
        assert db.write(lambda conn: conn.scalar(sa.text("SELECT 1"))) == 1
    assert calls == []
    with db.connect() as conn:  # and the pooled connection is back to transactions afterwards
        assert conn.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]


def test_a_server_that_lost_its_prepared_statements_is_survived(
    medic_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Bugs caught: behind a pooler in transaction mode (each transaction on another server
    # connection) every EXECUTE failing with "prepared statement does not exist" for ever; the
    # operator not told which setting fixes it. DEALLOCATE ALL stands in for the pooler's switch.
    monkeypatch.setattr(prepared, "_pooler_seen", False)
    engine = make_engine(medic_env["MEDIC_DATABASE_URL"], pool_size=1)  # one connection: reused
    monkeypatch.setattr(db, "get_engine", lambda: engine)
    rows = _rows(4)
    try:
        db.write(lambda conn: transitions.create_jobs(conn, rows[:1], actor="t", now=rows[0].created_at))
        db.write(lambda conn: conn.exec_driver_sql("DEALLOCATE ALL"))  # the server forgets; the client does not
        # in a transaction the failed EXECUTE aborted it: the error is raised
        with pytest.raises(sa.exc.DBAPIError, match="does not exist"), engine.begin() as conn:
            transitions.create_jobs(conn, rows[1:2], actor="t", now=rows[1].created_at)
        assert prepared._pooler_seen, "the process stops preparing"
        assert "MEDIC_DB_PREPARED_STATEMENTS=false" in caplog.text
        with engine.begin() as conn:  # the next try runs plainly
            again = transitions.create_jobs(conn, rows[1:2], actor="t", now=rows[1].created_at)
        assert again[0].id == rows[1].id
        # autocommit (db.write) runs the statement plainly at once, in the same call
        monkeypatch.setattr(prepared, "_pooler_seen", False)
        db.write(lambda conn: conn.exec_driver_sql("DEALLOCATE ALL"))
        created = db.write(lambda conn: transitions.create_jobs(conn, rows[2:3], actor="t", now=rows[2].created_at))
        assert created[0].id == rows[2].id and prepared._pooler_seen
    finally:
        engine.dispose()
