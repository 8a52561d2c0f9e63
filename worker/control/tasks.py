"""Control loops as Celery tasks on the `medic.control` queue (scheduled by beat_schedule.py)."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task

from worker.broker import redis_keys
from worker.broker.celery_app import app
from worker.broker.redis_client import get_redis
from worker.control import schedule
from worker.control.registry import LOOPS, Loop
from worker.control.wiring import run_recorded
from worker.settings import get_settings

log = logging.getLogger(__name__)
schedule.install(app)


def _loop_task(loop: Loop) -> Task[[], dict[str, Any]]:
    """The Celery task of `loop`: one locked, recorded and counted run."""

    def run() -> dict[str, Any]:
        return run_recorded(loop)

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
