"""GET /health/ready: a schema window rather than one revision, Redis not required (the outbox
keeps accepting), and nothing but booleans for a caller without an admin key."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import RUN_ID, KeyFactory, _database_url
from tests.ledger.next_release import NEXT, next_release
from worker.ledger.migrate import upgrade
from worker.ops.stack import PrivateRedis
from worker.testing.processes import Processes, free_port
from worker.testing.servers import pg_admin_execute

SECRET = "Sup3rSecretLedgerPassw0rd"


@pytest.fixture
def ledger_one_release_ahead(medic_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A ledger the next release migrated with one additive migration this code does not know."""
    name = f"medic_test_{RUN_ID}_ahead_{uuid.uuid4().hex[:6]}"
    url = _database_url(name)
    upgrade(url, migrations=next_release(tmp_path, additive=True))
    yield url
    pg_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_api_stays_ready_on_a_ledger_one_additive_migration_ahead(
    procs: Processes, ledger_one_release_ahead: str
) -> None:
    """Given a ledger at the next release's revision (additive), When this (older) code's API is
    asked, Then it is ready: an old pod after the migration, or a rollback image."""
    engine = sa.create_engine(ledger_one_release_ahead)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT version_num FROM alembic_version")) == NEXT
    engine.dispose()
    _, url = procs.api("api-ahead", MEDIC_DATABASE_URL=ledger_one_release_ahead)
    ready = httpx.get(url + "/health/ready", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["ledger"] == {"ok": True, "required": True}


def test_redis_down_leaves_the_api_ready(procs: Processes, private_redis: PrivateRedis) -> None:
    """Given an API whose Redis stopped, Then it stays ready (POST /jobs still answers 202:
    tests/api/test_outages.py), and the checks say Redis is down."""
    _, url = procs.api("api-no-redis", MEDIC_REDIS_URL=private_redis.url)
    private_redis.stop(keep_dir=True)
    ready = httpx.get(url + "/health/ready", timeout=30)
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["redis"] == {"ok": False, "required": False}
    assert checks["ledger"]["ok"] is True


def test_an_unauthenticated_probe_sees_booleans_only(procs: Processes) -> None:
    """Given a ledger URL that carries a password (and names a host, port and user), When its
    connection fails, Then /health/ready says which check failed and nothing of the error."""
    port = free_port()
    dead = f"postgresql+psycopg2://ledger_user:{SECRET}@127.0.0.1:{port}/medic"
    _, url = procs.api("api-secret-url", MEDIC_DATABASE_URL=dead)
    ready = httpx.get(url + "/health/ready", timeout=30)
    assert ready.status_code == 503
    body = ready.json()
    assert body["checks"]["ledger"] == {"ok": False, "required": True}
    for check in body["checks"].values():
        assert set(check) == {"ok", "required"}, check
    for leak in (SECRET, "ledger_user", str(port), "127.0.0.1", "Error"):
        assert leak not in ready.text, leak


def test_an_admin_key_sees_the_details(procs: Processes, private_redis: PrivateRedis, make_key: KeyFactory) -> None:
    _, url = procs.api("api-details", MEDIC_REDIS_URL=private_redis.url)
    private_redis.stop(keep_dir=True)
    _, admin = make_key("admin")
    _, reader = make_key("read")
    detailed = httpx.get(url + "/health/ready", headers={"Authorization": f"Bearer {admin}"}, timeout=30).json()
    assert "error" in detailed["checks"]["redis"] and "revision" in detailed["checks"]["ledger"]
    plain = httpx.get(url + "/health/ready", headers={"Authorization": f"Bearer {reader}"}, timeout=30).json()
    assert set(plain["checks"]["redis"]) == {"ok", "required"}
