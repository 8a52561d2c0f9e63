"""Control loops as Celery tasks on the `medic.control` queue (scheduled by beat_schedule.py)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import signals

from worker.broker import redis_keys
from worker.broker.celery_app import CONTROL_QUEUE, app
from worker.broker.redis_client import eviction_risk, get_redis
from worker.control import schedule
from worker.control.alerts import health_and_alerts
from worker.control.autoscale import autoscale
from worker.control.backpressure import apply_backpressure
from worker.control.loop import LoopFn, loop_stats, run_loop
from worker.control.metrics import observe_run
from worker.control.prune import prune
from worker.control.reconcile import reconcile_broker
from worker.control.recover import recover_stuck
from worker.control.timeouts import enforce_timeouts
from worker.settings import get_settings

log = logging.getLogger(__name__)
MIN_LOCK_TTL_S = 10.0
schedule.install(app)


def _run(name: str, fn: LoopFn, period_s: float) -> dict[str, Any]:
    # The lock outlives a crashed run by a few periods at most, then the next run takes over.
    record = run_loop(name, fn, lock_ttl_s=max(MIN_LOCK_TTL_S, 3 * period_s))
    observe_run(name, record)
    return record


@app.task(name="medic.control.recover_stuck", ignore_result=True)
def recover_stuck_task() -> dict[str, Any]:
    return _run("recover_stuck", recover_stuck, get_settings().recover_period_seconds)


@app.task(name="medic.control.enforce_timeouts", ignore_result=True)
def enforce_timeouts_task() -> dict[str, Any]:
    return _run("enforce_timeouts", enforce_timeouts, get_settings().timeout_period_seconds)


@app.task(name="medic.control.reconcile_broker", ignore_result=True)
def reconcile_broker_task() -> dict[str, Any]:
    return _run("reconcile_broker", reconcile_broker, get_settings().reconcile_period_seconds)


@app.task(name="medic.control.apply_backpressure", ignore_result=True)
def apply_backpressure_task() -> dict[str, Any]:
    return _run("apply_backpressure", apply_backpressure, get_settings().backpressure_period_seconds)


@app.task(name="medic.control.autoscale", ignore_result=True)
def autoscale_task() -> dict[str, Any]:
    return _run("autoscale", autoscale, get_settings().autoscale_period_seconds)


@app.task(name="medic.control.prune", ignore_result=True)
def prune_task() -> dict[str, Any]:
    return _run("prune", prune, get_settings().prune_period_seconds)


@app.task(name="medic.control.health_and_alerts", ignore_result=True)
def health_and_alerts_task() -> dict[str, Any]:
    return _run("health_and_alerts", health_and_alerts, get_settings().health_period_seconds)


@app.task(name="medic.control.beat_alive", ignore_result=True)
def beat_alive() -> None:
    """Proves beat schedules and the control worker consumes: health reads this key's age."""
    s = get_settings()
    get_redis().set(redis_keys.beat_alive(), str(time.time()), ex=max(1, int(s.beat_alive_seconds * 4)))


def _health_watchdog() -> None:
    """Beat schedules health_and_alerts, so a dead beat would silence the very alert that says
    beat is dead. The control worker's main process runs the loop itself whenever it has not run
    for 2 periods; the loop's lock keeps this and beat's runs (and other control workers) apart."""
    period = get_settings().health_period_seconds
    while True:
        time.sleep(period)
        try:
            last = loop_stats("health_and_alerts").get("last", {}).get("at")
            if last is None or time.time() - float(last) > 2 * period:
                health_and_alerts_task()
        except Exception:
            log.exception("health watchdog run failed")


@signals.worker_ready.connect
def _warn_if_redis_evicts(sender: Any, **_: Any) -> None:
    """Said loudly at every worker's start; the MedicRedisEvictionPolicy alert says it while it lasts."""
    risk = eviction_risk()
    if risk:
        log.error("%s", risk)


@signals.worker_ready.connect
def _start_watchdog(sender: Any, **_: Any) -> None:
    """Only in a worker that consumes the control queue (the control worker)."""
    if type(getattr(sender, "controller", None)).__name__ == "TestWorkController":
        return  # an embedded test worker: tests run the loop themselves
    queues = sender.app.amqp.queues.consume_from or {}
    if CONTROL_QUEUE in queues:
        threading.Thread(target=_health_watchdog, name="medic-health-watchdog", daemon=True).start()
