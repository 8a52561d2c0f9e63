"""Control loops as Celery tasks on the `medic.control` queue (scheduled by beat_schedule.py)."""

from __future__ import annotations

import time
from typing import Any

from worker.broker import redis_keys
from worker.broker.celery_app import app
from worker.broker.redis_client import get_redis
from worker.control import schedule
from worker.control.autoscale import autoscale
from worker.control.backpressure import apply_backpressure
from worker.control.loop import LoopFn, run_loop
from worker.control.prune import prune
from worker.control.reconcile import reconcile_broker
from worker.control.recover import recover_stuck
from worker.control.timeouts import enforce_timeouts
from worker.settings import get_settings

MIN_LOCK_TTL_S = 10.0
schedule.install(app)


def _run(name: str, fn: LoopFn, period_s: float) -> dict[str, Any]:
    # The lock outlives a crashed run by a few periods at most, then the next run takes over.
    return run_loop(name, fn, lock_ttl_s=max(MIN_LOCK_TTL_S, 3 * period_s))


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


@app.task(name="medic.control.beat_alive", ignore_result=True)
def beat_alive() -> None:
    """Proves beat schedules and the control worker consumes: health reads this key's age."""
    s = get_settings()
    get_redis().set(redis_keys.beat_alive(), str(time.time()), ex=max(1, int(s.beat_alive_seconds * 4)))
