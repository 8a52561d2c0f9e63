"""The beat schedule: every control loop of the registry (worker/control/registry.py), its period
and its queue, and beat's liveness tick.

All loops run on the dedicated `medic.control` queue, so a backlog of application jobs can never
delay recovery. `expires` drops a run that missed its slot instead of piling runs up; each loop
also takes a Redis lock, so two beats or two control workers never act twice.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from worker.broker.celery_app import CONTROL_QUEUE, CONTROL_TASK_PREFIX
from worker.control.registry import LOOPS
from worker.settings import Settings, get_settings

BEAT_ALIVE_TASK = CONTROL_TASK_PREFIX + "beat_alive"


def _entry(task: str, period: float, expires: float) -> dict[str, Any]:
    return {"task": task, "schedule": period, "options": {"queue": CONTROL_QUEUE, "expires": expires}}


def beat_schedule(s: Settings) -> dict[str, dict[str, Any]]:
    schedule = {loop.schedule_key: _entry(loop.task_name, loop.period(s), loop.expires(s)) for loop in LOOPS}
    # Not a loop: no lock, no run record; its age is what says beat and the control worker live.
    schedule["beat-alive"] = _entry(BEAT_ALIVE_TASK, s.beat_alive_seconds, max(1.0, 0.9 * s.beat_alive_seconds))
    return schedule


def install(app: Celery) -> None:
    """Give `app` the schedule. Beat imports the app's `imports` (the control tasks, which call
    this) before it reads `beat_schedule`, so a broken schedule stops beat at start."""
    app.conf.beat_schedule = beat_schedule(get_settings())
