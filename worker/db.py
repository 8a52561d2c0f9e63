"""The ledger's engine: one per process (re-created after fork), pre-ping and recycle on.

Every caller goes through `ledger_errors()` so a ledger that is down surfaces as
`LedgerUnavailableError` (retryable) instead of a raw driver error.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url

from worker.errors import LedgerUnavailableError
from worker.settings import get_settings

_lock = threading.Lock()


def _reset_after_fork() -> None:
    # A thread of the parent may hold the lock at the moment of fork(); the child would wait forever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
_engine: Engine | None = None
_engine_pid: int | None = None
_engine_url: str | None = None


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


def get_engine() -> Engine:
    """This process's engine; a forked child never reuses its parent's connections."""
    global _engine, _engine_pid, _engine_url
    url = get_settings().database_url
    with _lock:
        if _engine is None or _engine_pid != os.getpid() or _engine_url != url:
            if _engine is not None and _engine_pid == os.getpid():
                _engine.dispose()
            # A parent's pool is dropped without closing: its sockets belong to the parent.
            s = get_settings()
            _engine = make_engine(url, pool_size=s.db_pool_size, pool_timeout=s.db_pool_timeout_seconds)
            _engine_pid = os.getpid()
            _engine_url = url
        return _engine


def dispose_engine() -> None:
    global _engine
    with _lock:
        if _engine is not None and _engine_pid == os.getpid():
            _engine.dispose()
        _engine = None


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
