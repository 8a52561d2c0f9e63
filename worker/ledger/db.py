"""The ledger's engine: one per process (re-created after fork), dead connections caught free.

Every caller goes through `ledger_errors()` so a ledger that is down surfaces as
`LedgerUnavailableError` (retryable) instead of a raw driver error; `with_ledger_retry` rides out
a short outage where waiting is right (a worker recording a claim or an outcome).

The hot writes (enqueue, claim, finalize, lease extension) are one statement each on PostgreSQL
(row + event in a CTE, worker/ledger/transitions.py) and go through `write()`: autocommit, so the
statement is its own transaction and costs one round trip (psycopg2 sends BEGIN and COMMIT as two
more). There is no `pool_pre_ping` (a `SELECT 1` round trip per checkout): a checked-out
connection whose socket already has data waiting (the server's FATAL + EOF after
`pg_terminate_backend` or a restart) is replaced at no cost, and `write()` re-runs its statement
once on a fresh connection if the connection still dies under it.

Nothing waits on the ledger without bound: every transaction starts with `SET LOCAL`
statement_timeout, lock_timeout and idle_in_transaction_session_timeout (in the same round trip
as its first statement; safe behind PgBouncer in transaction mode, unlike startup options), and
every connection has TCP keepalives (`SessionLimits`, MEDIC_DB_*).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import select
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg2.extensions
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from worker.errors import LedgerUnavailableError
from worker.forksafe import PerProcess
from worker.ledger import dialect
from worker.ledger.dialect import ASYNC_COMMIT
from worker.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
# Statements PostgreSQL refuses inside a transaction block: a `SET LOCAL` sent in their round
# trip would make one (an implicit block), so they go alone ("VACUUM cannot run inside a
# transaction block"). Maintenance only: no hot path sends them.
_OUTSIDE_TRANSACTION = re.compile(
    r"\s*(VACUUM|CLUSTER|REINDEX|CHECKPOINT|ALTER\s+SYSTEM|(CREATE|DROP)\s+(DATABASE|TABLESPACE)"
    r"|(CREATE\s+(UNIQUE\s+)?|DROP\s+)INDEX\s+CONCURRENTLY)\b",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class SessionLimits:
    """Server-side timeouts of every ledger transaction and TCP keepalives of its connections, so
    that no statement, lock wait, idle transaction or silent peer holds a caller without bound.

    The timeouts are sent as `SET LOCAL` in front of each transaction's first statement (same
    round trip), not as startup `options`, which PgBouncer refuses and which a transaction pooler
    would not keep; keepalives are libpq's own (client side) and need nothing from a pooler."""

    statement_timeout_ms: int = 0
    lock_timeout_ms: int = 0
    idle_in_transaction_timeout_ms: int = 0
    keepalive_s: int = 0

    @classmethod
    def from_settings(cls) -> SessionLimits:
        s = get_settings()
        return cls(
            s.db_statement_timeout_ms,
            s.db_lock_timeout_ms,
            s.db_idle_in_transaction_timeout_ms,
            s.db_tcp_keepalive_seconds,
        )

    def prefix(self) -> str:
        """The `SET LOCAL` statements (with their separators) a transaction starts with."""
        pairs = (
            ("statement_timeout", self.statement_timeout_ms),
            ("lock_timeout", self.lock_timeout_ms),
            ("idle_in_transaction_session_timeout", self.idle_in_transaction_timeout_ms),
        )
        return "".join(f"SET LOCAL {name} = {int(ms)}; " for name, ms in pairs if ms > 0)

    def connect_args(self) -> dict[str, int]:
        """libpq keepalives, and tcp_user_timeout for data sent but never acknowledged."""
        if self.keepalive_s <= 0:
            return {}
        k = self.keepalive_s
        return {
            "keepalives": 1,
            "keepalives_idle": k,
            "keepalives_interval": k,
            "keepalives_count": 3,
            "tcp_user_timeout": 4000 * k,
        }


def make_engine(
    url: str, *, pool_size: int = 5, pool_timeout: float = 10.0, limits: SessionLimits | None = None
) -> Engine:
    """An engine that survives ledger restarts: stale connections are tested and replaced.
    `limits`: this process's settings unless given (SessionLimits() for none)."""
    limits = SessionLimits.from_settings() if limits is None else limits
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    engine = sa.create_engine(
        url,
        pool_recycle=300,
        pool_size=pool_size,
        max_overflow=pool_capacity(pool_size) - pool_size,
        pool_timeout=pool_timeout,
        poolclass=WaitCountingPool,
        connect_args={"connect_timeout": 3, "application_name": f"medic-{os.getpid()}", **limits.connect_args()},
    )
    sa.event.listen(engine, "checkout", _dead_on_arrival)
    sa.event.listen(engine, "before_cursor_execute", _statement_prefix(limits.prefix()), retval=True)
    return engine


def _dead_on_arrival(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection the server has already closed: an idle connection has nothing
    to read unless the server sent its goodbye (FATAL, then EOF). One poll(2), no round trip;
    SQLAlchemy then discards it and checks out a fresh one (pool/base.py `_checkout`)."""
    if getattr(dbapi_conn, "closed", 0):
        raise sa_exc.DisconnectionError("pooled ledger connection is closed")
    poller = select.poll()
    poller.register(dbapi_conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        raise sa_exc.DisconnectionError("the ledger closed this pooled connection")


_SENT_IN_FRONT = re.compile(r"^(SET LOCAL \w+ = \w+; )+")


def as_written(statement: str) -> str:
    """`statement` without the `SET LOCAL`s `_statement_prefix` sent in front of it: what its
    caller wrote (for tools that EXPLAIN or count what was sent)."""
    return _SENT_IN_FRONT.sub("", statement)


def _statement_prefix(limits: str) -> Callable[..., tuple[str, Any]]:
    """Statements sent in the same round trip as a statement (psycopg2 uses the simple query
    protocol, so they run in its transaction, an implicit one in autocommit mode):

    - `limits` (SessionLimits.prefix) when the statement opens a transaction: the connection is
      idle, so psycopg2 sends BEGIN (or, in autocommit, the statement alone) next;
    - `SET LOCAL synchronous_commit = off` for a write that asked for it (db.write)."""

    def prefix(
        _conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> tuple[str, Any]:
        if executemany or _OUTSIDE_TRANSACTION.match(statement):
            return statement, parameters
        head = limits if limits and cursor.connection.info.transaction_status == _IDLE else ""
        if context is not None and context.execution_options.get(ASYNC_COMMIT):
            head += "SET LOCAL synchronous_commit = off; "
        return head + statement, parameters

    return prefix


def _engine_for(url: str) -> Engine:
    s = get_settings()
    return make_engine(url, pool_size=s.db_pool_size, pool_timeout=s.db_pool_timeout_seconds)


_engine: PerProcess[str, Engine] = PerProcess(_engine_for, close=lambda engine: engine.dispose())


def get_engine() -> Engine:
    """This process's engine; a forked child never reuses its parent's connections."""
    return _engine.get(get_settings().database_url)


def dispose_engine() -> None:
    _engine.clear()


def is_connection_error(exc: BaseException) -> bool:
    """True when the error means "the ledger is unreachable", not "the statement is wrong"."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError))


# Called (no arguments) each time a pool checkout in this process times out: the metrics layers
# count it (medic_db_pool_timeouts_total) without the ledger importing them.
pool_timeout_hooks: list[Callable[[], None]] = []
# Called with the seconds waited each time a checkout in this process found every connection of
# its pool checked out and had to wait for one (medic_db_pool_waits_total): it got one, or it
# timed out (then the timeout hooks are called too).
pool_wait_hooks: list[Callable[[float], None]] = []


def _notify(hooks: list[Callable[..., None]], *args: float) -> None:
    """Call every hook; a failing hook is logged, never turned into a different ledger error."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            log.exception("pool hook %r failed", hook)


def pool_capacity(pool_size: int) -> int:
    """Connections one process's pool may hold: `pool_size`, and as many again on overflow (a burst
    opens more rather than wait; the connection budget, worker/ops/budget.py, counts all of them)."""
    return 2 * pool_size


class WaitCountingPool(QueuePool):
    """A QueuePool that tells `pool_wait_hooks` when a checkout has to wait: every connection the
    pool may make exists (`_overflow >= _max_overflow`, the test QueuePool._do_get itself makes
    before a blocking get) and none is idle. The path that does not wait costs two attribute reads
    and a len(): no lock, no clock. Unlocked, like SQLAlchemy's own test: a connection checked in
    between this test and the get counts as a wait of ~0 s (the pool WAS at capacity)."""

    def _do_get(self) -> ConnectionPoolEntry:
        idle = self._pool.queue  # type: ignore[attr-defined]  # util.Queue's deque: len() takes no lock
        if self._max_overflow > -1 and self._overflow >= self._max_overflow and not idle:
            started = time.monotonic()
            try:
                return super()._do_get()
            finally:
                _notify(pool_wait_hooks, time.monotonic() - started)
        return super()._do_get()


@contextlib.contextmanager
def ledger_errors() -> Iterator[None]:
    try:
        yield
    except sa_exc.SQLAlchemyError as exc:
        if isinstance(exc, sa_exc.TimeoutError):  # only QueuePool raises it: no connection came free in time
            _notify(pool_timeout_hooks)
        if is_connection_error(exc):
            raise LedgerUnavailableError(f"ledger unavailable: {type(exc.__cause__ or exc).__name__}") from exc
        raise


@contextlib.contextmanager
def begin() -> Iterator[Connection]:
    """One transaction on the ledger, with connection errors made retryable."""
    with ledger_errors(), get_engine().begin() as conn:
        yield conn


@contextlib.contextmanager
def connect() -> Iterator[Connection]:
    with ledger_errors(), get_engine().connect() as conn:
        yield conn


@contextlib.contextmanager
def snapshot() -> Iterator[Connection]:
    """One transaction whose every read sees the same snapshot (REPEATABLE READ on PostgreSQL)."""
    with ledger_errors(), get_engine().connect() as conn:
        conn = dialect.of(conn).one_snapshot(conn)
        with conn.begin():
            yield conn


def lost_connection(exc: LedgerUnavailableError) -> bool:
    """The connection died under the call (not a refusal by a live server): outcome unknown."""
    cause = exc.__cause__
    return isinstance(cause, sa_exc.DBAPIError) and bool(cause.connection_invalidated)


def write(fn: Callable[[Connection], T], *, sync_commit: bool = True) -> T:
    """Run `fn`, ONE statement on PostgreSQL, as its own transaction (autocommit: one round trip).

    On SQLite `fn` may issue several statements (the transitions do there), so it runs in a
    transaction. `sync_commit=False` commits without waiting for the WAL flush: only for writes
    whose loss in a PostgreSQL crash is the at-least-once case anyway (claim, lease extension;
    docs/guarantees.md). A connection that dies under the statement is replaced and `fn` re-run
    once: `fn` must be safe to repeat (fenced transitions are; enqueue inserts ON CONFLICT (id)).
    """
    for attempt in (1, 2):
        try:
            with (
                ledger_errors(),
                get_engine().connect() as conn,
                dialect.of(conn).one_write(conn, sync_commit=sync_commit),
            ):
                return fn(conn)
        except LedgerUnavailableError as exc:
            if attempt == 2 or not lost_connection(exc):
                raise
            log.info("ledger connection lost under a write; retrying once on a fresh one: %s", exc)
    raise AssertionError("unreachable")


def with_ledger_retry(fn: Callable[[], T], *, budget_s: float, what: str) -> T:
    """Call `fn` until the ledger answers or `budget_s` runs out (then raise the last error)."""
    deadline = time.monotonic() + budget_s
    delay = 0.2
    while True:
        try:
            return fn()
        except LedgerUnavailableError as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: ledger unavailable, retrying in %.1fs: %s", what, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def ensure_database(url: str) -> bool:
    """Create the PostgreSQL database named in `url` if it is missing; True if created."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return False
    admin = sa.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database})
            if exists:
                return False
            quoted = admin.dialect.identifier_preparer.quote(parsed.database)
            conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        admin.dispose()
