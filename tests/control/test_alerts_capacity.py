"""Alert rules made real, part two: an old backlog, late leases, dead jobs, Redis memory and
PostgreSQL connections. The condition is real (rows in a ledger, a presence key, bytes in a
private Redis, sessions on a private PostgreSQL cluster); health_and_alerts is called as a
function with the clock passed in, and the webhook is a real HTTP server (tests/control/webhook.py).

Each test checks the alert is only pending after the first run (its `for` has not passed), fires
once after `for`, stays firing (no resolve) while the clear has not lasted `for`, and resolves
once: exactly one firing and one resolved call, with labels naming what it is about.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
import sqlalchemy as sa

from tests.conftest import REDIS_URL, switched_env
from tests.control import fabricate
from tests.control.webhook import Webhook
from worker.broker import presence
from worker.clock import seconds, utcnow
from worker.control import alerts, registry, snapshot
from worker.control.loop import run_loop
from worker.control.recover import recover_stuck
from worker.ledger import db, transitions
from worker.ledger.migrate import upgrade
from worker.ops.stack import PrivateRedis
from worker.testing.processes import wait_for
from worker.testing.servers import PrivatePostgres, delete_keys

FOR_S = 2.0


@pytest.fixture
def alerting(private_ledger: dict[str, str], webhook: Webhook) -> Iterator[dict[str, str]]:
    """Key prefixes of this test's own (alert state, loop records), alerting to `webhook`."""
    env = {
        "MEDIC_KEY_PREFIX": f"ac{uuid.uuid4().hex[:6]}:",
        "MEDIC_ALERT_WEBHOOK_URL": webhook.url,
        "MEDIC_ALERT_FOR_SECONDS": str(FOR_S),
    }
    fabricate.empty_ledger()
    yield env
    delete_keys(REDIS_URL, env["MEDIC_KEY_PREFIX"])


def _state(name: str, labels: dict[str, str]) -> list[bool]:
    """`firing` of each active instance of one alert (pending: False)."""
    return [a["firing"] for a in alerts.active() if a["name"] == name and a["labels"] == labels]


def fire_then_resolve(
    webhook: Webhook, name: str, severity: str, labels: dict[str, str], t0: dt.datetime, clear: Callable[[], float]
) -> None:
    """Run the loop at t0 (pending), after `for` (fires), after `clear()` (still firing), after the
    clear held for `for` (resolved). `clear` makes the condition go away and returns how far the
    clock must move for it to count (0 for most; a minute for the dead-jobs window)."""

    def run(at: float) -> None:
        registry.health_and_alerts(t0 + dt.timedelta(seconds=at))

    run(0)
    assert _state(name, labels) == [False], "pending only: its `for` has not passed"
    run(FOR_S / 2)
    assert _state(name, labels) == [False], "still pending"
    assert webhook.calls(name, **labels) == []
    run(FOR_S + 0.1)
    assert _state(name, labels) == [True]
    wait_for(lambda: webhook.calls(name, **labels) == ["firing"], 10, 0.05, f"{name} fires")
    shift = clear()
    run(shift + FOR_S + 0.5)
    assert _state(name, labels) == [True], "clear, but not for `for` yet: no resolve"
    run(shift + 2 * FOR_S + 0.6)
    assert _state(name, labels) == []
    wait_for(lambda: len(webhook.calls(name, **labels)) == 2, 10, 0.05, f"{name} resolves")
    run(shift + 2 * FOR_S + 1.5)  # one more run: a duplicate would be queued by now
    assert webhook.calls(name, **labels) == ["firing", "resolved"]
    body = next(b for b in webhook.bodies if b["commonLabels"]["alertname"] == name)
    assert body["commonLabels"] == {"alertname": name, "severity": severity, **labels}
    assert [a["name"] for a in alerts.recently_resolved() if a["labels"] == labels].count(name) == 1


def test_an_old_backlog_fires_backlog_old_then_resolves(alerting: dict[str, str], webhook: Webhook) -> None:
    """A job queued (nobody takes it) longer than MEDIC_ALERT_BACKLOG_AGE_SECONDS; a worker's
    claim clears it. Fails if the rule reads the wrong age or no queue label."""
    queue = f"q-old-{uuid.uuid4().hex[:6]}"
    with switched_env({**alerting, "MEDIC_ALERT_BACKLOG_AGE_SECONDS": "30"}):
        job = fabricate.queued_job("t-old", queue=queue)
        t0 = utcnow() + seconds(31)  # the job has waited 31 s by then

        def claim() -> float:
            with db.begin() as conn:
                assert transitions.claim(conn, job.id, job.delivery_id, worker="w@h", pid=1, now=t0, lease_s=600)
            return 0.0

        fire_then_resolve(webhook, "MedicQueueBacklogOld", "warning", {"queue": queue}, t0, claim)


def test_leases_late_on_a_present_worker_fire_lease_late_then_resolve(
    alerting: dict[str, str], webhook: Webhook
) -> None:
    """A running job whose lease expired while its worker's live presence still holds it: the
    real recover_stuck run (through run_loop, which records it) counts it lease_late. Once the
    presence is gone, the next run takes the job and counts none."""
    with switched_env(alerting):
        job = fabricate.running_job("t-late", "late@host", 41)
        presence.announce("late@host", 41, incarnation="inc-late", held=[job.delivery_id], ttl_s=60)
        t0 = utcnow() + seconds(60)  # long past the 3 s lease
        assert run_loop("recover_stuck", lambda _: recover_stuck(t0), lock_ttl_s=10)["lease_late"] == 1

        def presence_gone() -> float:
            presence.announce("late@host", 41, incarnation="inc-late", held=[], ttl_s=60)
            assert run_loop("recover_stuck", lambda _: recover_stuck(t0), lock_ttl_s=10)["lease_late"] == 0
            return 0.0

        fire_then_resolve(webhook, "MedicJobsLeaseLate", "warning", {}, t0, presence_gone)


def test_dead_jobs_past_the_threshold_fire_dead_high_then_resolve(alerting: dict[str, str], webhook: Webhook) -> None:
    """Three jobs end dead (the undeliverable path) against MEDIC_ALERT_DEAD_PER_MINUTE=2; a
    minute later they are out of the window. Fails if the window or the threshold is misread."""
    with switched_env({**alerting, "MEDIC_ALERT_DEAD_PER_MINUTE": "2"}):
        t0 = utcnow()
        with db.begin() as conn:
            for _ in range(3):
                job = fabricate.queued_job("t-dead")
                assert transitions.give_up_undeliverable(conn, job, actor="test", now=t0, detail="test")
        fire_then_resolve(webhook, "MedicDeadJobsHigh", "warning", {}, t0, lambda: 61.0)


def test_redis_memory_past_80_percent_fires_then_resolves(
    alerting: dict[str, str], webhook: Webhook, private_redis: PrivateRedis
) -> None:
    """A PRIVATE redis-server (noeviction) with maxmemory a little over what it uses, filled past
    80 % of it; deleting the filler clears it."""
    client = redis.Redis.from_url(private_redis.url)
    limit = int(client.info("memory")["used_memory"]) + 8_000_000
    client.config_set("maxmemory", limit)
    filler = 0
    while int(client.info("memory")["used_memory"]) < 0.86 * limit:  # bounded: 10 kB a key, < 700 keys
        client.set(f"filler:{filler}", b"x" * 10_000)
        filler += 1
    # over 80 %, and ~1 MB under maxmemory: medic's own writes (alert state, snapshot) still work
    assert int(client.info("memory")["used_memory"]) < 0.9 * limit
    with switched_env({**alerting, "MEDIC_REDIS_URL": private_redis.url}):

        def drain() -> float:
            client.delete(*(f"filler:{i}" for i in range(filler)))
            return 0.0

        fire_then_resolve(webhook, "MedicRedisMemoryHigh", "critical", {}, utcnow(), drain)


@pytest.fixture
def small_pg() -> Iterator[PrivatePostgres]:
    """A private cluster with max_connections 20, migrated (as tests/ops/test_budget_health.py)."""
    pg = PrivatePostgres()
    with open(pg.data / "postgresql.conf", "a") as conf:
        conf.write("\nmax_connections = 20\n")
    pg.start()
    upgrade(pg.url)
    yield pg
    pg.destroy()


def test_postgres_connections_past_80_percent_fire_then_resolve(
    alerting: dict[str, str], webhook: Webhook, small_pg: PrivatePostgres
) -> None:
    """16 sessions held on a cluster of max_connections 20: with the loop's own, 17 > 16 (80 %).
    Fails if background processes were counted as connections (they would fire it at rest) or
    the rule compares the wrong way."""
    engine = sa.create_engine(small_pg.url, poolclass=sa.pool.NullPool)
    held = [engine.connect() for _ in range(16)]
    try:
        with switched_env({**alerting, "MEDIC_DATABASE_URL": small_pg.url}):

            def release() -> float:
                for conn in held:
                    conn.close()
                return 0.0

            fire_then_resolve(webhook, "MedicPostgresConnectionsHigh", "critical", {}, utcnow(), release)
            registry.health_and_alerts(utcnow())
            assert snapshot.read()["postgres"]["connections"] == 1, "the loop's own session, no background process"
    finally:
        for conn in held:
            conn.close()
        engine.dispose()
