"""The beat schedule: every control loop, its period and its queue.

All loops run on the dedicated `medic.control` queue, so a backlog of application jobs can never
delay recovery. `expires` drops a run that missed its slot instead of piling runs up; each loop
also takes a Redis lock, so two beats or two control workers never act twice.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.broker.celery_app import CONTROL_QUEUE
from worker.settings import Settings, get_settings


def _entry(task: str, period: float) -> dict[str, Any]:
    return {
        "task": task,
        "schedule": period,
        "options": {"queue": CONTROL_QUEUE, "expires": max(1.0, period * 0.9)},
    }


def beat_schedule(s: Settings) -> dict[str, dict[str, Any]]:
    return {
        "recover-stuck": _entry("medic.control.recover_stuck", s.recover_period_seconds),
        "enforce-timeouts": _entry("medic.control.enforce_timeouts", s.timeout_period_seconds),
        "reconcile-broker": _entry("medic.control.reconcile_broker", s.reconcile_period_seconds),
        "apply-backpressure": _entry("medic.control.apply_backpressure", s.backpressure_period_seconds),
        "autoscale": _entry("medic.control.autoscale", s.autoscale_period_seconds),
        "prune": _entry("medic.control.prune", s.prune_period_seconds),
        "health-and-alerts": _entry("medic.control.health_and_alerts", s.health_period_seconds),
        "beat-alive": _entry("medic.control.beat_alive", s.beat_alive_seconds),
    }


def install(app: Celery) -> None:
    """Give `app` the schedule. Beat imports the app's `imports` (the control tasks, which call
    this) before it reads `beat_schedule`, so a broken schedule stops beat at start."""
    app.conf.beat_schedule = beat_schedule(get_settings())
