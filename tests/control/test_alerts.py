"""Alert rules made real: a real control worker and beat run health_and_alerts on their schedule,
and a real HTTP server in this test receives the webhooks. Each alert must fire after its `for`,
resolve when the condition clears, and reach the webhook exactly once each way."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import REDIS_URL, switched_env
from tests.control.webhook import Webhook
from tests.ops import pooljobs  # noqa: F401 - registers tests.pool_timeout for enqueue()
from worker.accept import enqueue
from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.control import alerts, registry
from worker.control.loop import loop_stats
from worker.testing.processes import Processes, free_port, wait_for
from worker.testing.servers import delete_keys

FOR_S = 2.0
EVICTION = "MedicRedisEvictionPolicy"


@pytest.fixture(scope="module")
def plane(
    private_ledger: dict[str, str], webhook: Webhook, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Processes]:
    """A control worker and beat of this module's own ledger and prefixes, alerting to `webhook`."""
    env = {
        **private_ledger,
        "MEDIC_ALERT_WEBHOOK_URL": webhook.url,
        "MEDIC_ALERT_FOR_SECONDS": str(FOR_S),
        "MEDIC_QUEUE_WATERMARKS": json.dumps({"q-alert-shed": [3, 1]}),
        # beat may take longer than 2 s to start on a loaded machine
        "MEDIC_ALERT_FOR_OVERRIDES": json.dumps({"MedicLoopStale": 4}),
        "MEDIC_METRICS_PORT": "0",
    }
    procs = Processes(env, tmp_path_factory.mktemp("alerts"))
    procs.control_plane()
    yield procs
    procs.stop_all()


def _health_runs() -> int:
    return int(loop_stats("health_and_alerts").get("runs", 0))


def _firing(name: str, **labels: str) -> bool | None:
    """The alert's state as the last evaluation left it: False pending, True firing, None absent.

    Read straight after an evaluation, in this thread: the webhook is posted after the state is
    written, so reading the webhook alone cannot tell "not sent" from "not sent yet"."""
    found = [
        a for a in alerts.active() if a["name"] == name and all(a["labels"].get(k) == v for k, v in labels.items())
    ]
    assert len(found) <= 1, found
    return bool(found[0]["firing"]) if found else None


def _resolved_at(name: str, **labels: str) -> list[float]:
    """When each recent resolve of the alert was recorded (newest first)."""
    return [
        float(a["resolved_at"])
        for a in alerts.recently_resolved()
        if a["name"] == name and all(a["labels"].get(k) == v for k, v in labels.items())
    ]


def _settle(periods: int = 4) -> None:
    """Let the loop run a few more times: a duplicate send would show up by then."""
    start = _health_runs()
    wait_for(lambda: _health_runs() >= start + periods, 30, 0.1, "health_and_alerts runs on")


def test_queue_with_work_and_no_worker_fires_then_resolves(plane: Processes, webhook: Webhook) -> None:
    queue = "q-alert-unc"
    first = plane.worker("unc-1", queues=queue, concurrency=1)
    first.stop()  # the only worker of the queue is gone (its consumer registration with it)
    started = dt.datetime.now(dt.UTC).timestamp()
    for i in range(2):
        enqueue("examples.echo", {"message": str(i)}, queue=queue)
    wait_for(lambda: webhook.calls("MedicQueueUnconsumed", queue=queue), 30, 0.1, "firing webhook")
    fired = alerts.active()
    [alert] = [a for a in fired if a["name"] == "MedicQueueUnconsumed" and a["labels"] == {"queue": queue}]
    assert alert["firing"] and alert["severity"] == "critical"
    assert alert["fired_at"] - alert["since"] >= FOR_S, "fired only after its `for`"
    assert alert["fired_at"] >= started + FOR_S

    plane.worker("unc-2", queues=queue, concurrency=1)  # a consumer again: the queue drains
    wait_for(lambda: "resolved" in webhook.calls("MedicQueueUnconsumed", queue=queue), 30, 0.1, "resolved webhook")
    _settle()
    assert webhook.calls("MedicQueueUnconsumed", queue=queue) == ["firing", "resolved"]
    body = next(b for b in webhook.bodies if b["commonLabels"].get("queue") == queue and b["status"] == "resolved")
    assert body["version"] == "4" and body["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    resolved = [a for a in alerts.recently_resolved() if a["labels"] == {"queue": queue}]
    assert resolved and resolved[0]["name"] == "MedicQueueUnconsumed"


def test_queue_past_its_watermark_fires_shedding_then_resolves(plane: Processes, webhook: Webhook) -> None:
    queue = "q-alert-shed"  # high watermark 3, low 1 (MEDIC_QUEUE_WATERMARKS of the control plane)
    for i in range(4):
        enqueue("examples.echo", {"message": str(i)}, queue=queue)
    wait_for(lambda: webhook.calls("MedicQueueShedding", queue=queue), 30, 0.1, "shedding fires")
    plane.worker("shed-1", queues=queue, concurrency=1)
    wait_for(lambda: "resolved" in webhook.calls("MedicQueueShedding", queue=queue), 30, 0.1, "shedding resolves")
    _settle()
    assert webhook.calls("MedicQueueShedding", queue=queue) == ["firing", "resolved"]


def test_killed_beat_fires_loop_stale_then_resolves(plane: Processes, webhook: Webhook) -> None:
    wait_for(lambda: _health_runs() >= 3, 30, 0.1, "the loop runs")
    assert webhook.calls("MedicLoopStale", loop="beat") == [], "beat is alive: nothing stale yet"
    [beat] = [p for p in plane.procs if p.name == "beat"]
    beat.kill_group(signal.SIGKILL)
    # beat is dead: the control worker's watchdog keeps health_and_alerts running
    wait_for(lambda: webhook.calls("MedicLoopStale", loop="beat"), 40, 0.1, "stale fires")
    plane.beat("beat-2")
    wait_for(lambda: "resolved" in webhook.calls("MedicLoopStale", loop="beat"), 40, 0.1, "stale resolves")
    _settle()
    assert webhook.calls("MedicLoopStale", loop="beat") == ["firing", "resolved"]


def test_evicting_redis_fires_eviction_policy_then_resolves(private_ledger: dict[str, str], webhook: Webhook) -> None:
    """A PRIVATE redis-server with allkeys-lru (the shared one is never reconfigured); the loop is
    called as a function with the clock passed in, the webhook is the real server."""
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="medic-redis-"))
    subprocess.run(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--daemonize", "yes",
                    "--pidfile", str(workdir / "pid"), "--dir", str(workdir), "--maxmemory-policy", "allkeys-lru"],
                   check=True, timeout=30)  # fmt: skip
    private = redis.Redis(port=port)
    wait_for(lambda: _pings(private), 10, 0.05, "private redis up")
    prefix = f"ev{uuid.uuid4().hex[:6]}:"
    env = {"MEDIC_REDIS_URL": f"redis://127.0.0.1:{port}/0", "MEDIC_KEY_PREFIX": prefix,
           "MEDIC_ALERT_WEBHOOK_URL": webhook.url, "MEDIC_ALERT_FOR_SECONDS": str(FOR_S)}  # fmt: skip
    try:
        with switched_env(env):
            t0 = dt.datetime.now(dt.UTC)
            registry.health_and_alerts(t0)
            assert _firing(EVICTION) is False, "pending from the first sample"
            registry.health_and_alerts(t0 + dt.timedelta(seconds=FOR_S / 2))
            assert _firing(EVICTION) is False, "not before `for`"
            registry.health_and_alerts(t0 + dt.timedelta(seconds=FOR_S + 0.1))
            assert _firing(EVICTION) is True, "fires once it held for `for`"
            wait_for(lambda: webhook.calls(EVICTION), 10, 0.05, "eviction policy fires")
            registry.health_and_alerts(t0 + dt.timedelta(seconds=FOR_S + 1))  # still firing: not re-sent
            private.config_set("maxmemory-policy", "noeviction")
            registry.health_and_alerts(t0 + dt.timedelta(seconds=FOR_S + 2))  # clear: resolves after `for`
            assert _firing(EVICTION) is True and _resolved_at(EVICTION) == [], "no resolve before it stays clear"
            assert webhook.calls(EVICTION) == ["firing"], "no resolve sent before it stays clear"
            resolve_at = t0 + dt.timedelta(seconds=2 * FOR_S + 2.1)
            registry.health_and_alerts(resolve_at)
            assert _firing(EVICTION) is None and _resolved_at(EVICTION) == [resolve_at.timestamp()], "resolved"
            wait_for(lambda: len(webhook.calls(EVICTION)) == 2, 10, 0.05, "resolved")
            registry.health_and_alerts(t0 + dt.timedelta(seconds=2 * FOR_S + 3))
            body = next(b for b in webhook.bodies if b["commonLabels"]["alertname"] == EVICTION)
            assert body["commonLabels"] == {"alertname": "MedicRedisEvictionPolicy", "severity": "critical",
                                            "policy": "allkeys-lru"}  # fmt: skip
    finally:
        private.shutdown(nosave=True)
    assert webhook.calls(EVICTION) == ["firing", "resolved"]


def _pings(client: redis.Redis[bytes]) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_held_pool_connections_fire_pool_saturated_then_resolve(
    private_ledger: dict[str, str], webhook: Webhook
) -> None:
    """Four real sessions named like a medic process's pool, each inside a transaction (checked
    out, as the server sees it), against a pool of 2 + 2 overflow: over 80 %."""
    import sqlalchemy as sa

    engine = sa.create_engine(private_ledger["MEDIC_DATABASE_URL"], poolclass=sa.pool.NullPool,
                              connect_args={"application_name": "medic-99999"})  # fmt: skip
    held = [engine.connect() for _ in range(4)]
    prefix = f"ps{uuid.uuid4().hex[:6]}:"  # its own: the module's control worker must not judge this state too
    env = {"MEDIC_DB_POOL_SIZE": "2", "MEDIC_ALERT_WEBHOOK_URL": webhook.url, "MEDIC_ALERT_FOR_SECONDS": str(FOR_S),
           "MEDIC_KEY_PREFIX": prefix}  # fmt: skip
    try:
        with switched_env(env):
            for conn in held:
                conn.execute(sa.text("SELECT 1"))  # opens the transaction: `idle in transaction`
            t0 = dt.datetime.now(dt.UTC)
            registry.health_and_alerts(t0)
            assert _firing("MedicDbPoolSaturated", process="medic-99999") is False, "pending, not firing"
            registry.health_and_alerts(t0 + dt.timedelta(seconds=FOR_S + 0.1))
            assert _firing("MedicDbPoolSaturated", process="medic-99999") is True, "fires after `for`"
            wait_for(lambda: webhook.calls("MedicDbPoolSaturated", process="medic-99999"), 10, 0.05, "fires")
            for conn in held:
                conn.rollback()  # back in the pool: `idle`
            registry.health_and_alerts(t0 + dt.timedelta(seconds=FOR_S + 1))
            assert _firing("MedicDbPoolSaturated", process="medic-99999") is True, "no resolve on one clear sample"
            registry.health_and_alerts(t0 + dt.timedelta(seconds=2 * FOR_S + 1.1))  # clear for `for`
            assert _firing("MedicDbPoolSaturated", process="medic-99999") is None, "resolved after `for` clear"
            wait_for(
                lambda: len(webhook.calls("MedicDbPoolSaturated", process="medic-99999")) == 2, 10, 0.05, "resolved"
            )
            registry.health_and_alerts(t0 + dt.timedelta(seconds=2 * FOR_S + 2))
    finally:
        for conn in held:
            conn.close()
        engine.dispose()
        delete_keys(REDIS_URL, prefix)
    assert webhook.calls("MedicDbPoolSaturated", process="medic-99999") == ["firing", "resolved"]


def test_a_pool_checkout_that_timed_out_in_a_worker_fires_pool_saturated_then_resolves(
    private_ledger: dict[str, str], webhook: Webhook, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A real worker child holds a pool of 1 + 1 and asks it for a third connection: that checkout
    waits, then times out. The child tells the control plane (worker/runtime/pooltrouble.py), and
    the rule fires for that process after `for` although the wait is long over (within the rule's
    window), then resolves once the process went a window and `for` without one. Fails if the
    rule ignores waits/timeouts, the child's hooks do not publish them, or the window is shorter
    than `for` (a lone timeout would never fire)."""
    prefix = f"pw{uuid.uuid4().hex[:6]}:"  # its own: the module's control worker must not judge this state too
    queue = f"q-alert-pw-{uuid.uuid4().hex[:6]}"
    modules = "worker.examples,tests.testjobs,tests.ops.pooljobs"
    env = {"MEDIC_KEY_PREFIX": prefix, "MEDIC_ALERT_WEBHOOK_URL": webhook.url, "MEDIC_ALERT_FOR_SECONDS": str(FOR_S),
           "MEDIC_METRICS_PORT": "0", "MEDIC_JOB_MODULES": modules}  # fmt: skip
    procs = Processes({**private_ledger, **env}, tmp_path_factory.mktemp("poolwait"))
    try:
        with switched_env(env):
            procs.worker("pool-wait-worker", queues=queue, concurrency=1)
            enqueue("tests.pool_timeout", {}, queue=queue, max_attempts=1)
            [process] = wait_for(lambda: list(get_redis().hgetall(redis_keys.pool_trouble())), 30, 0.05,
                                 "the child publishes its wait and timeout")  # fmt: skip
            trouble = redis_keys.pool_trouble()
            wait_for(lambda: json.loads(get_redis().hget(trouble, process) or "{}").get("timeouts") == 1,
                     10, 0.05, "its timeout published")  # fmt: skip
            assert process.startswith("worker:"), process
            last = json.loads(get_redis().hget(trouble, process) or "{}")
            assert (last["waits"], last["timeouts"]) == (1, 1), last
            t0 = dt.datetime.fromtimestamp(float(last["last_at"]), dt.UTC)
            registry.health_and_alerts(t0)
            assert _firing("MedicDbPoolSaturated", process=process) is False, "pending from the first sample"
            registry.health_and_alerts(t0 + dt.timedelta(seconds=FOR_S / 2))
            assert _firing("MedicDbPoolSaturated", process=process) is False, "not before `for`"
            assert webhook.calls("MedicDbPoolSaturated", process=process) == [], "nothing sent before `for`"
            registry.health_and_alerts(t0 + dt.timedelta(seconds=FOR_S + 0.1))
            assert _firing("MedicDbPoolSaturated", process=process) is True, "fires after `for`"
            wait_for(lambda: webhook.calls("MedicDbPoolSaturated", process=process), 10, 0.05, "fires")
            registry.health_and_alerts(t0 + dt.timedelta(seconds=FOR_S + 1))  # still in its window: not re-sent
            assert _firing("MedicDbPoolSaturated", process=process) is True
            clear = t0 + dt.timedelta(seconds=FOR_S + 2 * 60)  # past the window (for + 2 health periods)
            registry.health_and_alerts(clear)
            assert _firing("MedicDbPoolSaturated", process=process) is True, "no resolve before `for` clear"
            assert _resolved_at("MedicDbPoolSaturated", process=process) == [], "no resolve before `for` clear"
            assert webhook.calls("MedicDbPoolSaturated", process=process) == ["firing"], "no resolve sent before `for`"
            registry.health_and_alerts(clear + dt.timedelta(seconds=FOR_S + 0.1))
            assert _firing("MedicDbPoolSaturated", process=process) is None, "resolved once clear for `for`"
            wait_for(lambda: len(webhook.calls("MedicDbPoolSaturated", process=process)) == 2, 10, 0.05, "resolved")
            registry.health_and_alerts(clear + dt.timedelta(seconds=FOR_S + 1))
    finally:
        procs.stop_all()
        delete_keys(REDIS_URL, prefix)
    assert webhook.calls("MedicDbPoolSaturated", process=process) == ["firing", "resolved"]


def test_slow_api_is_logged_and_fires_api_slow(
    private_ledger: dict[str, str], webhook: Webhook, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A real API whose every request is 'slow' (MEDIC_SLOW_REQUEST_MS=1 while a health check
    takes longer): each is logged with its route, status, duration and ledger time, and the p95 it
    publishes fires MedicApiSlow."""
    prefix = f"as{uuid.uuid4().hex[:6]}:"
    env = {"MEDIC_KEY_PREFIX": prefix, "MEDIC_SLOW_REQUEST_MS": "1", "MEDIC_ALERT_WEBHOOK_URL": webhook.url,
           "MEDIC_ALERT_FOR_SECONDS": str(FOR_S)}  # fmt: skip
    procs = Processes({**private_ledger, **env}, tmp_path_factory.mktemp("slow"))
    try:
        proc, url = procs.api("slow-api")
        for _ in range(25):
            assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200
        line = wait_for(lambda: [ln for ln in proc.log().splitlines() if "slow request GET /health/ready" in ln], 10)
        assert "-> 200 in" in line[0] and "ms (ledger " in line[0], line[0]
        with switched_env(env):
            wait_for(lambda: get_redis().hlen(redis_keys.api_latency()) == 1, 15, 0.1, "p95 published")
            t0 = dt.datetime.now(dt.UTC)
            registry.health_and_alerts(t0)
            assert _firing("MedicApiSlow") is False, "pending, not firing"
            registry.health_and_alerts(t0 + dt.timedelta(seconds=FOR_S + 0.1))
            assert _firing("MedicApiSlow") is True, "fires after `for`"
            wait_for(lambda: webhook.calls("MedicApiSlow"), 10, 0.05, "api slow fires")
            procs.stop_all()  # the API is gone: its p95 goes stale, and the alert clears
            registry.health_and_alerts(t0 + dt.timedelta(seconds=60))
            assert _firing("MedicApiSlow") is True, "no resolve on the first clear sample"
            registry.health_and_alerts(t0 + dt.timedelta(seconds=60 + FOR_S + 0.1))  # clear for `for`
            assert _firing("MedicApiSlow") is None, "resolved once clear for `for`"
            wait_for(lambda: len(webhook.calls("MedicApiSlow")) == 2, 10, 0.05, "api slow resolves")
    finally:
        procs.stop_all()
        delete_keys(REDIS_URL, prefix)
    assert webhook.calls("MedicApiSlow") == ["firing", "resolved"]
