"""Every ledger transaction is bounded on the server (statement_timeout, lock_timeout,
idle_in_transaction_session_timeout, sent as SET LOCAL in its first round trip) and every ledger
connection has TCP keepalives: a slow statement, a lock held by someone else or a client that hung
inside its transaction cannot hold a caller for ever. Real PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import switched_env
from tests.ledger.make import a_new_job
from worker.accept.commit import Accepted, commit
from worker.errors import LedgerUnavailableError
from worker.ledger import db, transitions
from worker.ledger.models import jobs


@contextlib.contextmanager
def _limits(statement_ms: int, lock_ms: int, idle_ms: int, keepalive_s: int = 7) -> Iterator[None]:
    """This test process's ledger limits (the engine is made again with them)."""
    env = {
        "MEDIC_DB_STATEMENT_TIMEOUT_MS": str(statement_ms),
        "MEDIC_DB_LOCK_TIMEOUT_MS": str(lock_ms),
        "MEDIC_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": str(idle_ms),
        "MEDIC_DB_TCP_KEEPALIVE_SECONDS": str(keepalive_s),
    }
    with switched_env(env):
        db.dispose_engine()
        yield


def _cause(exc: BaseException) -> str:
    """The driver's error class under the LedgerUnavailableError (psycopg2 names each SQLSTATE)."""
    return type(getattr(exc.__cause__, "orig", exc)).__name__


@_limits(statement_ms=300, lock_ms=10_000, idle_ms=10_000)
def test_a_statement_longer_than_the_statement_timeout_is_cancelled(medic_env: dict[str, str]) -> None:
    # Bug caught: no statement_timeout (a statement that hangs holds its caller for ever), or the
    # SET LOCAL sent only inside explicit transactions (the autocommit writes go unbounded).
    with pytest.raises(LedgerUnavailableError) as in_transaction, db.begin() as conn:
        conn.execute(sa.text("SELECT pg_sleep(5)"))
    assert _cause(in_transaction.value) == "QueryCanceled"
    with pytest.raises(LedgerUnavailableError) as autocommit:
        db.write(lambda conn: conn.execute(sa.text("SELECT pg_sleep(5)")))
    assert _cause(autocommit.value) == "QueryCanceled"


@_limits(statement_ms=10_000, lock_ms=300, idle_ms=10_000)
def test_a_lock_held_by_another_transaction_is_waited_for_at_most_the_lock_timeout(medic_env: dict[str, str]) -> None:
    # Bug caught: no lock_timeout: a caller waits for another's lock for as long as it is held.
    new = a_new_job(tenant="limits")
    db.write(lambda conn: transitions.create_jobs(conn, [new], actor="t", now=new.created_at))
    released = threading.Event()
    outcome: list[BaseException | None] = []

    def update() -> None:
        try:
            with db.begin() as conn:
                conn.execute(sa.update(jobs).where(jobs.c.id == new.id).values(priority=1))
            outcome.append(None)
        except LedgerUnavailableError as exc:
            outcome.append(exc)
        released.set()

    with db.begin() as holder:
        holder.execute(sa.select(jobs.c.id).where(jobs.c.id == new.id).with_for_update())
        waiter = threading.Thread(target=update)
        waiter.start()
        released.wait(15)  # without the timeout: the holder lets go after 15 s and the update passes
    waiter.join(15)
    assert outcome and outcome[0] is not None, "the update waited out the lock instead of giving up"
    assert _cause(outcome[0]) == "LockNotAvailable"


@_limits(statement_ms=10_000, lock_ms=10_000, idle_ms=500)
def test_a_client_hung_inside_its_transaction_releases_its_key_after_the_idle_timeout(
    medic_env: dict[str, str],
) -> None:
    # Bug caught: no idle_in_transaction_session_timeout: a client that hung after inserting an
    # idempotency key (no COMMIT, no ROLLBACK, socket open) blocks that key for ever.
    key = uuid.uuid4().hex
    hung = a_new_job(tenant="limits", idempotency_key=key)
    later = a_new_job(tenant="limits", idempotency_key=key)
    outcome: list[Any] = []

    def submit() -> None:
        try:
            outcome.append(commit([later], ["t"])[0])
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcome.append(exc)

    with db.get_engine().connect() as holder:
        holder.begin()
        transitions.create_job_once(holder, hung, actor="t", now=hung.created_at)
        waiter = threading.Thread(target=submit)
        waiter.start()  # its insert of the same key waits for the hung transaction
        waiter.join(15)  # without the timeout: still waiting here; the holder ends below
        before_release = list(outcome)
        with contextlib.suppress(sa.exc.OperationalError):  # the server ended it (the timeout)
            holder.rollback()
    waiter.join(15)
    assert before_release, "the submit waited until the hung transaction's client let go"
    assert isinstance(outcome[0], Accepted) and outcome[0].created and outcome[0].job.id == later.id, outcome


@_limits(statement_ms=300, lock_ms=400, idle_ms=500, keepalive_s=7)
def test_connections_carry_tcp_keepalives_and_transactions_the_limits(medic_env: dict[str, str]) -> None:
    # Bug caught: keepalives or a limit not passed to the connection (a silent peer is waited on
    # until the kernel gives up, some 2 hours); a setting of 0 not turning its limit off.
    with db.get_engine().connect() as conn:
        dsn = conn.connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]
        assert (dsn["keepalives"], dsn["keepalives_idle"], dsn["tcp_user_timeout"]) == ("1", "7", "28000")
        with conn.begin():
            shown = [conn.scalar(sa.text(f"SHOW {name}")) for name in ("statement_timeout", "lock_timeout")]
            assert shown == ["300ms", "400ms"]
    with switched_env({"MEDIC_DB_STATEMENT_TIMEOUT_MS": "0", "MEDIC_DB_TCP_KEEPALIVE_SECONDS": "0"}):
        db.dispose_engine()
        with db.get_engine().connect() as conn:
            assert "keepalives_idle" not in conn.connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]
            with conn.begin():
                assert conn.scalar(sa.text("SHOW statement_timeout")) == "0"


@_limits(statement_ms=300, lock_ms=400, idle_ms=500)
def test_maintenance_that_cannot_run_in_a_transaction_block_still_runs(medic_env: dict[str, str]) -> None:
    # Bug caught: the SET LOCAL limits sent in front of every statement, VACUUM included (the
    # round trip becomes one implicit transaction block: "VACUUM cannot run inside a transaction
    # block"; bench.scale's fill and the plan tests VACUUM through this engine).
    maintenance = db.get_engine().execution_options(isolation_level="AUTOCOMMIT")
    with maintenance.connect() as conn:
        conn.exec_driver_sql("VACUUM ANALYZE jobs")
        conn.exec_driver_sql("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_session_limits_probe ON jobs (created_at)")
        conn.exec_driver_sql("DROP INDEX CONCURRENTLY ix_session_limits_probe")
