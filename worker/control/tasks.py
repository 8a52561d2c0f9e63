"""Control loops as Celery tasks on the `medic.control` queue (scheduled by beat_schedule.py)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Task, signals

from worker.broker import redis_keys
from worker.broker.celery_app import CONTROL_QUEUE, app
from worker.broker.redis_client import eviction_risk, get_redis
from worker.control import schedule
from worker.control.loop import loop_stats, run_loop
from worker.control.metrics import observe_run
from worker.control.registry import LOOPS, Loop
from worker.settings import get_settings

log = logging.getLogger(__name__)
schedule.install(app)


def _loop_task(loop: Loop) -> Task[[], dict[str, Any]]:
    """The Celery task of `loop`: one locked, recorded and counted run."""

    def run() -> dict[str, Any]:
        record = run_loop(loop.name, loop.run, lock_ttl_s=loop.lock_ttl(get_settings()))
        observe_run(loop, record)
        return record

    run.__name__ = run.__qualname__ = f"{loop.name}_task"
    run.__doc__ = f"One run of the {loop.name} control loop."
    task: Task[[], dict[str, Any]] = app.task(name=loop.task_name, ignore_result=True)(run)
    return task


# loop name -> its task; the worker finds each by its task name, beat schedules that name
TASKS: dict[str, Task[[], dict[str, Any]]] = {loop.name: _loop_task(loop) for loop in LOOPS}


@app.task(name=schedule.BEAT_ALIVE_TASK, ignore_result=True)
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
                TASKS["health_and_alerts"]()
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
