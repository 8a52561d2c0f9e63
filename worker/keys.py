"""Every Redis key medic writes, in one place. All start with ``settings.key_prefix``."""

from __future__ import annotations

from worker.settings import get_settings


def _p() -> str:
    return get_settings().key_prefix


def worker_presence(worker: str, pid: int) -> str:
    """TTL'd key that says a worker process is alive; recovery asks it before taking a job."""
    return f"{_p()}worker:{worker}:{pid}"


def worker_presence_pattern() -> str:
    return f"{_p()}worker:*"


def control_lock(loop: str) -> str:
    """Singleton lock of one control loop."""
    return f"{_p()}lock:{loop}"


def broker_run_id() -> str:
    """The Redis run_id seen when jobs were last published; a change means the broker restarted."""
    return f"{_p()}broker:run_id"


def beat_alive() -> str:
    return f"{_p()}beat:alive"
