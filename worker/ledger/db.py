"""The ledger's engine: one per process (re-created after fork), pre-ping and recycle on.

Every caller goes through `ledger_errors()` so a ledger that is down surfaces as
`LedgerUnavailableError` (retryable) instead of a raw driver error; `with_ledger_retry` rides out
a short outage where waiting is right (a worker recording a claim or an outcome).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url

from worker.errors import LedgerUnavailableError
from worker.forksafe import PerProcess
from worker.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def make_engine(url: str, *, pool_size: int = 5, pool_timeout: float = 10.0) -> Engine:
    """An engine that survives ledger restarts: stale connections are tested and replaced."""
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
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_recycle=300,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        connect_args={"connect_timeout": 3, "application_name": f"medic-{os.getpid()}"},
    )


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


@contextlib.contextmanager
def ledger_errors() -> Iterator[None]:
    try:
        yield
    except sa_exc.SQLAlchemyError as exc:
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
