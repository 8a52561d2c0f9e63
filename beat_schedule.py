"""The beat schedule: every control loop, its period and its queue.

All loops run on the dedicated `medic.control` queue, so a backlog of application jobs can never
delay recovery. `expires` drops a run that missed its slot instead of piling them up.
"""

from __future__ import annotations

from typing import Any

from worker.celery_app import CONTROL_QUEUE
from worker.settings import Settings


def _entry(task: str, period: float) -> dict[str, Any]:
    return {
        "task": task,
        "schedule": period,
        "options": {"queue": CONTROL_QUEUE, "expires": max(1.0, period * 0.9)},
    }


def beat_schedule(s: Settings) -> dict[str, dict[str, Any]]:
    return {
        "beat-alive": _entry("medic.control.beat_alive", s.beat_alive_seconds),
    }
