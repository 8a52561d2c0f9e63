"""medic through a real PgBouncer in transaction mode: the fixtures every test of this room sees
point the ledger at a private `pgbouncer` (worker/testing/pgbouncer.py), for the real processes
and for this test process alike.

`medic_env` is overridden for the room (package scope): its own database, reached only through
the pooler, with `MEDIC_DB_PREPARED_STATEMENTS=false` (docs/deploy.md "Behind PgBouncer"). The
fixtures of tests/conftest.py that build on `medic_env` (`procs`, `make_key`, `client`) follow it;
the session-scoped ones are given again here at a scope that may depend on it (`stack`,
`private_ledger`, `cprocs`), so that tests imported from the other rooms run here unchanged.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa

from tests.conftest import REDIS_URL, RUN_ID, switched_env
from worker.testing.pgbouncer import PrivatePgBouncer
from worker.testing.processes import Processes
from worker.testing.servers import PG_ADMIN_URL, delete_keys, pg_admin_execute

POOL_SIZE = 3  # server connections per database: fewer than the clients, so they are shared


@pytest.fixture(scope="session")
def bouncer() -> Iterator[PrivatePgBouncer]:
    """The private PgBouncer, in front of the test PostgreSQL."""
    admin = sa.engine.make_url(PG_ADMIN_URL)
    pooler = PrivatePgBouncer(admin.host or "127.0.0.1", admin.port or 5432, pool_size=POOL_SIZE)
    pooler.start()
    yield pooler
    pooler.stop()


def _ledger_env(bouncer: PrivatePgBouncer, suffix: str) -> dict[str, str]:
    return {
        "MEDIC_DATABASE_URL": bouncer.url(f"medic_test_{RUN_ID}_{suffix}", PG_ADMIN_URL),
        "MEDIC_KEY_PREFIX": f"mt{RUN_ID}{suffix}:",
        "MEDIC_BROKER_KEY_PREFIX": f"mtb{RUN_ID}{suffix}:",
        "MEDIC_DB_PREPARED_STATEMENTS": "false",
    }


@contextlib.contextmanager
def _ledger(base: dict[str, str], bouncer: PrivatePgBouncer) -> Iterator[dict[str, str]]:
    """A database and key prefixes of their own (migrated through the pooler), this process switched
    to them while it lasts; dropped afterwards (directly: DROP DATABASE ... FORCE)."""
    from worker.ledger.migrate import upgrade

    overrides = _ledger_env(bouncer, f"pgb{uuid.uuid4().hex[:6]}")
    upgrade(overrides["MEDIC_DATABASE_URL"])
    try:
        with switched_env(overrides):
            yield {**base, **overrides}
    finally:
        pg_admin_execute(f'DROP DATABASE IF EXISTS "{database_of(overrides)}" WITH (FORCE)')
        delete_keys(REDIS_URL, overrides["MEDIC_KEY_PREFIX"])
        delete_keys(REDIS_URL, overrides["MEDIC_BROKER_KEY_PREFIX"])


def database_of(env: dict[str, str]) -> str:
    return str(sa.engine.make_url(env["MEDIC_DATABASE_URL"]).database)


@pytest.fixture(scope="package")
def medic_env(medic_env: dict[str, str], bouncer: PrivatePgBouncer) -> Iterator[dict[str, str]]:
    """The room's environment: tests/conftest.py's, with a ledger reached through the pooler."""
    with _ledger(medic_env, bouncer) as env:
        yield env


@pytest.fixture(scope="module")
def private_ledger(medic_env: dict[str, str], bouncer: PrivatePgBouncer) -> Iterator[dict[str, str]]:
    """A module's own ledger (for tests whose loops scan every job), through the pooler."""
    with _ledger(medic_env, bouncer) as env:
        yield env


@pytest.fixture(scope="package")
def stack(medic_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """tests/conftest.py's shared API and worker, through the pooler."""
    p = Processes(medic_env, tmp_path_factory.mktemp("pgb-stack"))
    p.worker("pgb-shared", queues="default", concurrency=2)
    _, url = p.api("pgb-api")
    yield url
    p.stop_all()


@pytest.fixture
def cprocs(private_ledger: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    """tests/chaos/conftest.py's processes on a module's own ledger, through the pooler."""
    p = Processes(private_ledger, tmp_path)
    yield p
    p.stop_all()


SESSION_STATE = (
    "SELECT pg_backend_pid(), current_setting('statement_timeout'), current_setting('lock_timeout'), "
    "current_setting('idle_in_transaction_session_timeout'), current_setting('synchronous_commit'), "
    "current_setting('default_transaction_isolation'), current_setting('search_path'), "
    "current_setting('TimeZone'), "
    "(SELECT count(*) FROM pg_prepared_statements), (SELECT count(*) FROM pg_listening_channels()), "
    "(SELECT count(*) FROM pg_cursors), (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), "
    "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())"
)
STATE_NAMES = (
    "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "synchronous_commit",
    "default_transaction_isolation", "search_path", "TimeZone", "prepared_statements", "listening_channels",
    "open_cursors", "temp_tables", "advisory_locks",
)  # fmt: skip


def server_sessions(bouncer: PrivatePgBouncer, database: str, n: int = POOL_SIZE) -> dict[int, dict[str, object]]:
    """The session state of every server connection the pooler holds for `database`: `n` clients
    each inside a transaction at once take `n` distinct server connections (all there are)."""
    conns = [
        psycopg2.connect(host="127.0.0.1", port=bouncer.port, user=bouncer.user, dbname=database) for _ in range(n)
    ]
    try:
        seen: dict[int, dict[str, object]] = {}
        for conn in conns:  # no commit until every one has read: each holds its server connection
            with conn.cursor() as cur:
                cur.execute(SESSION_STATE)
                pid, *values = cur.fetchone() or ()
                seen[int(pid)] = dict(zip(STATE_NAMES, values, strict=True))
        return seen
    finally:
        for conn in conns:
            conn.rollback()
            conn.close()


def fresh_session_state(database: str) -> dict[str, object]:
    """The same read on a new direct session: what a server connection starts with."""
    url = sa.engine.make_url(PG_ADMIN_URL)
    conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=database)
    try:
        with conn.cursor() as cur:
            cur.execute(SESSION_STATE)
            _, *values = cur.fetchone() or ()
            return dict(zip(STATE_NAMES, values, strict=True))
    finally:
        conn.close()
