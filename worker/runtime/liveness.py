"""A process's own liveness, in a file its container's liveness probe reads (`medic health --live`).

Liveness must depend on nothing but the process: a liveness probe that asked Redis (the consumer
registration) restarted every worker at once when Redis was away for two minutes, and a restart
fixes nothing about Redis. The main process of a worker, control worker or beat touches this file
from a thread of its own every heartbeat, whatever Redis and the ledger do; the probe fails only
when the process stopped touching it (it died, was frozen, or hangs holding the interpreter).
Whether it consumes is readiness and alerting (`medic health --role worker`, MedicQueueUnconsumed).
The touch is one `utime` call, no lock, so a pool child forked meanwhile inherits nothing held.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from worker.background import BackgroundThread
from worker.runtime.worker_info import is_test_worker
from worker.settings import get_settings

log = logging.getLogger(__name__)

STALE_AFTER_HEARTBEATS = 5
_thread: BackgroundThread | None = None


def path() -> Path:
    """MEDIC_LIVENESS_FILE, or `medic-alive` in the temp directory (one medic process per container)."""
    return Path(get_settings().liveness_file or os.path.join(tempfile.gettempdir(), "medic-alive"))


def stale_after_s() -> float:
    return STALE_AFTER_HEARTBEATS * get_settings().heartbeat_seconds


def age_s(file: Path, now: float | None = None) -> float | None:
    """Seconds since the file was last touched; None when there is none."""
    try:
        touched = file.stat().st_mtime
    except FileNotFoundError:
        return None
    return (time.time() if now is None else now) - touched


def start() -> BackgroundThread:
    """Touch the file every heartbeat from now on (once per process, however often asked)."""
    global _thread
    if _thread is None:
        file = path()
        file.parent.mkdir(parents=True, exist_ok=True)
        file.touch()

        def touch() -> None:
            os.utime(file)

        _thread = BackgroundThread("medic-liveness", touch, every_s=get_settings().heartbeat_seconds, logger=log)
        _thread.start()
    return _thread


def on_worker_init(sender: Any, **_: Any) -> None:
    """A worker's main process, before it connects to the broker: a worker that cannot reach
    Redis at start is alive all the same."""
    if not is_test_worker(sender):
        start()


def on_beat_init(**_: Any) -> None:
    start()
