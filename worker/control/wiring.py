"""How the control plane joins a worker process: its Celery loader, its signal handlers, and one
recorded run of a loop.

Celery resolves the loader (named by path in worker/broker/celery_app.py) while the control tasks
are being defined, so this module must not import worker/control/tasks.py: the loader, the
handlers and `run_recorded` live here, and the tasks call `run_recorded`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals

from worker.background import BackgroundThread
from worker.broker.celery_app import CONTROL_QUEUE
from worker.broker.redis_client import eviction_risk
from worker.control.declared import sync_logged
from worker.control.loop import loop_stats, run_loop
from worker.control.metrics import observe_run
from worker.control.registry import LOOPS, Loop
from worker.runtime.signals import Handlers, WorkerLoader, connect
from worker.settings import get_settings

log = logging.getLogger(__name__)

[HEALTH] = [loop for loop in LOOPS if loop.name == "health_and_alerts"]


def run_recorded(loop: Loop) -> dict[str, Any]:
    """One run of `loop` as the control plane runs it: under its lock, recorded, counted."""
    record = run_loop(loop.name, loop.run, lock_ttl_s=loop.lock_ttl(get_settings()))
    observe_run(loop, record)
    return record


def _run_health_if_beat_is_late() -> None:
    """Beat schedules health_and_alerts, so a dead beat would silence the very alert that says
    beat is dead. The control worker's main process runs the loop itself whenever it has not run
    for 2 periods; the loop's lock keeps this and beat's runs (and other control workers) apart."""
    period = get_settings().health_period_seconds
    last = loop_stats("health_and_alerts").get("last", {}).get("at")
    if last is None or time.time() - float(last) > 2 * period:
        run_recorded(HEALTH)


def _warn_if_redis_evicts(sender: Any, **_: Any) -> None:
    """Said loudly at every worker's start; the MedicRedisEvictionPolicy alert says it while it lasts."""
    risk = eviction_risk()
    if risk:
        log.error("%s", risk)


def _start_watchdog(sender: Any, **_: Any) -> None:
    """Only in a worker that consumes the control queue (the control worker)."""
    if type(getattr(sender, "controller", None)).__name__ == "TestWorkController":
        return  # an embedded test worker: tests run the loop themselves
    queues = sender.app.amqp.queues.consume_from or {}
    if CONTROL_QUEUE in queues:
        period = get_settings().health_period_seconds
        BackgroundThread(
            "medic-health-watchdog", _run_health_if_beat_is_late, every_s=period, first_after_s=period, logger=log
        ).start()


def _sync_schedules_in_control_worker(sender: Any, **_: Any) -> None:
    """A control worker's start writes the schedules declared in code into the ledger."""
    if type(getattr(sender, "controller", None)).__name__ == "TestWorkController":
        return
    if CONTROL_QUEUE in (sender.app.amqp.queues.consume_from or {}):
        sync_logged()


def _sync_schedules_at_beat_start(sender: Any, **_: Any) -> None:
    """Beat's start does too: whichever of the two starts first, the schedules are there."""
    sync_logged()


CONTROL_HANDLERS: Handlers = (
    (signals.worker_ready, _warn_if_redis_evicts),
    (signals.worker_ready, _start_watchdog),
    (signals.worker_ready, _sync_schedules_in_control_worker),
    (signals.beat_init, _sync_schedules_at_beat_start),
)


class ControlLoader(WorkerLoader):
    """medic's Celery loader (named by path in worker/broker/celery_app.py): at a worker's or
    beat's start, the runtime's handlers and the control plane's, and nothing on import."""

    def on_worker_init(self) -> None:
        # the control plane's first: a control worker's start (the schedules' sync) is done
        # before the runtime registers it as a consumer, which `medic up` waits for
        connect(CONTROL_HANDLERS)
        super().on_worker_init()
