"""Where PostgreSQL and SQLite differ, in one place: the rest of the ledger asks `of(conn)` and
reads the same whatever the database.

PostgreSQL is the production ledger: a change and its event are ONE statement (a DML CTE), the
hot ones cached and prepared, and a single-statement write runs in autocommit (one round trip).
SQLite (`medic up` on a laptop, the tests' second backend) keeps the plain forms: a change, then
its event, in a transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from worker.ledger import pg_statements
from worker.ledger.events import Event, created, returning_with_events
from worker.ledger.models import jobs
from worker.ledger.records import Job, NewJob
from worker.ledger.states import JobState

INCREMENT = pg_statements.INCREMENT
ASYNC_COMMIT = "medic_async_commit"  # execution option: commit this statement's transaction asynchronously

# Connections each medic process holds checked out, as the server sees them: a pooled connection
# waiting in its pool is `idle`; one a caller holds is `active` or `idle in transaction`. Every
# medic engine names itself `medic-<pid>` (worker/ledger/db.py), so this is the pool use of
# every process of the fleet in one query, with no cost on the path of a job.
Pick = tuple[uuid.UUID, uuid.UUID, dt.datetime | None]  # (job, its new delivery, its ETA): a dispatcher's start

_BUSY_BY_PROCESS = (
    "SELECT application_name, count(*) FROM pg_stat_activity WHERE application_name LIKE 'medic-%' "
    "AND state <> 'idle' GROUP BY application_name ORDER BY count(*) DESC LIMIT 20"
)
# Connection slots in use: client backends only (the checkpointer, WAL writer and the other
# background processes are rows of pg_stat_activity too, but take no max_connections slot).
_CLIENT_CONNECTIONS = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
_LOCK_KEYS = sa.text(
    "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) "
    "FROM (SELECT unnest(CAST(:keys AS text[])) AS k ORDER BY 1) s"
)
_SNAPSHOT = "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint FROM pg_current_snapshot() s"


def job_update(
    job_id: uuid.UUID, frm: str, to: str, *, at: dt.datetime, values: dict[str, Any], where: Sequence[Any] = ()
) -> sa.Update:
    """`UPDATE jobs ... WHERE id AND state [AND where] RETURNING *`: a change, in its general form."""
    return (
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.state == frm, *where)
        .values(state=to, updated_at=at, **values)
        .returning(*jobs.c)
    )


def _on_conflict(
    insert: Callable[[sa.Table], Any],
    table: sa.Table,
    values: Mapping[str, Any],
    key: Sequence[str],
    update: Mapping[str, Any] | None,
) -> sa.Insert:
    stmt = insert(table).values(**values)
    if update is None:
        return stmt.on_conflict_do_nothing(index_elements=list(key))  # type: ignore[no-any-return]
    return stmt.on_conflict_do_update(index_elements=list(key), set_=dict(update))  # type: ignore[no-any-return]


class LedgerDialect(Protocol):
    """What the ledger does differently on each database."""

    def insert_on_conflict(
        self, table: sa.Table, values: Mapping[str, Any], key: Sequence[str], update: Mapping[str, Any] | None = None
    ) -> sa.Insert:
        """INSERT `values`, or on a conflict over `key` nothing (`update` None) or `update`."""
        ...

    def create_jobs(self, conn: Connection, news: Sequence[NewJob], *, actor: str, now: dt.datetime) -> list[Job]:
        """Insert new `queued` jobs and their creation events; the records in `news`' order."""
        ...

    def change(self, conn: Connection, update: sa.Update, event: Event) -> Job | None:
        """Run `update` (one job, RETURNING every column) and record `event` if it changed a row."""
        ...

    def fenced(
        self,
        conn: Connection,
        job_id: uuid.UUID,
        delivery_id: uuid.UUID,
        event: Event,
        values: dict[str, Any],
        *,
        unless_paused: bool = False,
    ) -> Job | None:
        """A hot change fenced on (id, state, delivery_id) of a job with no cancel request (claim,
        succeed: a job whose cancel was requested ends through transitions.stop), and with
        `unless_paused` of a job whose queue is not paused (the claim); `values` may map a
        column to INCREMENT."""
        ...

    def ran_longer_than(self, limit_s: sa.ColumnElement[float], now: dt.datetime) -> sa.ColumnElement[bool]:
        """A job started more than `limit_s` seconds before `now`."""
        ...

    def epoch_minute(self, stamp: sa.ColumnElement[dt.datetime]) -> sa.ColumnElement[Any]:
        """The minute a time falls in, as whole minutes since 1970 (the console's chart buckets)."""
        ...

    def snapshot_horizon(self, conn: Connection) -> tuple[int, int]:
        """(xmin, xmax) of this transaction's snapshot, or (0, 0) where there is none."""
        ...

    def server_connections(self, conn: Connection) -> dict[str, Any] | None:
        """The server's view of connections (busy ones by process, used, the limit); None: no server."""
        ...

    def one_snapshot(self, conn: Connection) -> Connection:
        """`conn` set so that every read of its next transaction sees one snapshot."""
        ...

    def one_write(self, conn: Connection, *, sync_commit: bool) -> AbstractContextManager[None]:
        """The scope of one `db.write`."""
        ...

    def lock_keys(self, conn: Connection, keys: Sequence[str]) -> None:
        """Hold a lock on each of `keys` (sorted) until the transaction ends: the dispatch of
        jobs with one concurrency key is one at a time, across every process and queue."""
        ...

    def start_held(self, conn: Connection, picks: Sequence[Pick], *, actor: str, now: dt.datetime) -> list[Job]:
        """held -> queued (reason `dispatched`) for each (job, new delivery, ETA), with events;
        the jobs no longer held are left out."""
        ...


class SQLite:
    """The plain forms: several statements, which callers run in a transaction."""

    def insert_on_conflict(
        self, table: sa.Table, values: Mapping[str, Any], key: Sequence[str], update: Mapping[str, Any] | None = None
    ) -> sa.Insert:
        return _on_conflict(sqlite.insert, table, values, key, update)

    def create_jobs(self, conn: Connection, news: Sequence[NewJob], *, actor: str, now: dt.datetime) -> list[Job]:
        inserted: dict[uuid.UUID, Job] = {}
        for shape in pg_statements.by_shape([new.row() for new in news]):  # one executemany per set of columns
            stmt = jobs.insert().returning(*jobs.c, sort_by_parameter_order=True)
            inserted.update((job.id, job) for job in map(Job.of, conn.execute(stmt, shape)))
        ordered = [inserted[new.id] for new in news]
        conn.execute(*created(actor, now).insert_for(ordered))
        return ordered

    def change(self, conn: Connection, update: sa.Update, event: Event) -> Job | None:
        job = Job.maybe(conn.execute(update).first())
        if job is not None:
            conn.execute(*event.insert_for([job]))
        return job

    def fenced(
        self,
        conn: Connection,
        job_id: uuid.UUID,
        delivery_id: uuid.UUID,
        event: Event,
        values: dict[str, Any],
        *,
        unless_paused: bool = False,
    ) -> Job | None:
        assert event.frm is not None
        general = {k: (jobs.c[k] + 1 if v is INCREMENT else v) for k, v in values.items()}
        fence = [jobs.c.delivery_id == delivery_id, jobs.c.cancel_requested_at.is_(None)]
        if unless_paused:
            fence.append(~pg_statements.queue_paused())
        return self.change(
            conn, job_update(job_id, event.frm, event.to, at=event.at, values=general, where=fence), event
        )

    def epoch_minute(self, stamp: sa.ColumnElement[dt.datetime]) -> sa.ColumnElement[Any]:
        return sa.cast(sa.func.strftime("%s", stamp), sa.Integer) / 60  # the text of a UTC time

    def ran_longer_than(self, limit_s: sa.ColumnElement[float], now: dt.datetime) -> sa.ColumnElement[bool]:
        # no interval type: a difference of Julian days
        started = jobs.c.started_at
        ran_s = (sa.func.julianday(sa.literal(now, type_=started.type)) - sa.func.julianday(started)) * 86400.0
        return ran_s > limit_s

    def snapshot_horizon(self, conn: Connection) -> tuple[int, int]:
        """No transaction ids: holes are settled by time alone (one writer at a time)."""
        return 0, 0

    def server_connections(self, conn: Connection) -> dict[str, Any] | None:
        return None  # a file, no server

    def one_snapshot(self, conn: Connection) -> Connection:
        return conn  # a transaction reads one snapshot already

    @contextlib.contextmanager
    def one_write(self, conn: Connection, *, sync_commit: bool) -> Iterator[None]:
        """A write of several statements: one transaction."""
        with conn.begin():
            yield

    def lock_keys(self, conn: Connection, keys: Sequence[str]) -> None:
        """One writer at a time: a write statement takes the database's write lock for the rest
        of the transaction (the keys need no lock of their own)."""
        if keys:
            conn.execute(sa.text("UPDATE queue_controls SET queue = queue WHERE 0"))

    def start_held(self, conn: Connection, picks: Sequence[Pick], *, actor: str, now: dt.datetime) -> list[Job]:
        started = []
        for job_id, delivery_id, eta in picks:
            values = {"delivery_id": delivery_id, "published_at": now, "not_before": eta}
            update = job_update(job_id, JobState.HELD.value, JobState.QUEUED.value, at=now, values=values)
            event = Event(JobState.QUEUED.value, "dispatched", actor=actor, at=now, frm=JobState.HELD.value)
            if (job := self.change(conn, update, event)) is not None:
                started.append(job)
        return started


class PostgreSQL:
    """Each change and its event as ONE statement; a write of one statement runs in autocommit."""

    def insert_on_conflict(
        self, table: sa.Table, values: Mapping[str, Any], key: Sequence[str], update: Mapping[str, Any] | None = None
    ) -> sa.Insert:
        return _on_conflict(postgresql.insert, table, values, key, update)

    def create_jobs(self, conn: Connection, news: Sequence[NewJob], *, actor: str, now: dt.datetime) -> list[Job]:
        """ONE statement, `ON CONFLICT (id) DO NOTHING` so that re-running it after a lost
        connection (db.write) cannot duplicate a job: a row the first try committed is read back."""
        return pg_statements.create_jobs(conn, news, actor=actor, now=now)

    def change(self, conn: Connection, update: sa.Update, event: Event) -> Job | None:
        return Job.maybe(conn.execute(returning_with_events(update.cte("moved"), event)).first())

    def fenced(
        self,
        conn: Connection,
        job_id: uuid.UUID,
        delivery_id: uuid.UUID,
        event: Event,
        values: dict[str, Any],
        *,
        unless_paused: bool = False,
    ) -> Job | None:
        return pg_statements.fenced(conn, job_id, delivery_id, event, values, unless_paused=unless_paused)

    def epoch_minute(self, stamp: sa.ColumnElement[dt.datetime]) -> sa.ColumnElement[Any]:
        return sa.func.floor(sa.extract("epoch", stamp) / 60)

    def ran_longer_than(self, limit_s: sa.ColumnElement[float], now: dt.datetime) -> sa.ColumnElement[bool]:
        one_second = sa.literal_column("interval '1 second'", type_=sa.Interval)
        return jobs.c.started_at + limit_s * one_second < now

    def snapshot_horizon(self, conn: Connection) -> tuple[int, int]:
        row = conn.execute(sa.text(_SNAPSHOT)).one()
        return int(row[0]), int(row[1])

    def server_connections(self, conn: Connection) -> dict[str, Any] | None:
        busy = conn.execute(sa.text(_BUSY_BY_PROCESS)).all()
        return {
            "busy_by_process": {str(app): int(n) for app, n in busy},
            "connections": int(conn.scalar(sa.text(_CLIENT_CONNECTIONS)) or 0),
            "max_connections": int(conn.scalar(sa.text("SHOW max_connections")) or 0),
        }

    def one_snapshot(self, conn: Connection) -> Connection:
        return conn.execution_options(isolation_level="REPEATABLE READ")

    @contextlib.contextmanager
    def one_write(self, conn: Connection, *, sync_commit: bool) -> Iterator[None]:
        """ONE statement as its own transaction: autocommit on the driver's connection, one round
        trip (psycopg2 would send BEGIN and COMMIT as two more). `sync_commit=False` adds `SET
        LOCAL synchronous_commit = off` to the statement (worker/ledger/db.py).

        Not `execution_options(isolation_level="AUTOCOMMIT")`: psycopg2's `set_isolation_level`
        sends `SET default_transaction_isolation TO DEFAULT` on every checkout, a second round trip
        per write (seen in the server's statement log). The `autocommit` attribute is a client-side
        flag; it is switched back before the connection returns to the pool, whose reset (a
        ROLLBACK of no transaction) then costs nothing."""
        conn.execution_options(**{ASYNC_COMMIT: not sync_commit})
        raw = conn.connection.dbapi_connection
        raw.autocommit = True  # type: ignore[union-attr]
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # a dead connection is discarded by the pool anyway
                raw.autocommit = False  # type: ignore[union-attr]

    def lock_keys(self, conn: Connection, keys: Sequence[str]) -> None:
        """Transaction-scoped advisory locks on the keys' 64-bit hashes, taken in the keys' order
        (two dispatchers never wait for each other in a cycle); a hash collision only serializes
        two keys' dispatches."""
        if keys:
            conn.execute(_LOCK_KEYS, {"keys": sorted(keys)})

    def start_held(self, conn: Connection, picks: Sequence[Pick], *, actor: str, now: dt.datetime) -> list[Job]:
        return pg_statements.start_held(conn, picks, actor=actor, now=now) if picks else []


_DIALECTS: dict[str, LedgerDialect] = {"postgresql": PostgreSQL(), "sqlite": SQLite()}


def of(conn: Connection) -> LedgerDialect:
    """The ledger's dialect of `conn` (the one place that reads the database's name)."""
    return _DIALECTS[conn.dialect.name]
