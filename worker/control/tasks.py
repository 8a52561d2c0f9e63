"""Control loops as Celery tasks on the `medic.control` queue."""

from __future__ import annotations

import time

from worker import keys
from worker.celery_app import app
from worker.redis_client import get_redis
from worker.settings import get_settings


@app.task(name="medic.control.beat_alive", ignore_result=True)
def beat_alive() -> None:
    """Proves beat schedules and the control worker consumes: health reads this key's age."""
    s = get_settings()
    get_redis().set(keys.beat_alive(), str(time.time()), ex=int(s.beat_alive_seconds * 4))
