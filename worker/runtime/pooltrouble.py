"""Each process's ledger pool waits and timeouts, told to the control plane for MedicDbPoolSaturated.

The counters (`medic_db_pool_waits_total`, `medic_db_pool_timeouts_total`) are for Prometheus;
the health loop scrapes nothing. So the metrics layers' pool hooks also `note()` each wait and
timeout here, and a daemon thread of the process (started by its first wait: a process whose
pool never waits runs no thread and writes nothing) writes its running totals and the time of
the last one to one Redis hash, at most once a second (it looks every second, and writes when a
wait came since), with the process's metric label as the field. The loop reads the hash once
per period (`read`); the rule judges the times.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from worker.background import BackgroundThread
from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.forksafe import PerProcess

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 1.0
FORGET_AFTER_S = 3600.0  # a process that has not waited for an hour (or is gone) leaves the hash


class _Trouble:
    def __init__(self, process: str) -> None:
        self.process = process
        self.waits = 0
        self.timeouts = 0
        self.last_at = 0.0
        self.dirty = threading.Event()
        self.publisher = BackgroundThread("medic-pool-trouble", self.publish, every_s=PUBLISH_EVERY_S, logger=log)
        self.publisher.start()

    def publish(self) -> None:
        """Write the totals if they changed since the last write; on a failure they stay to write."""
        if not self.dirty.is_set():
            return
        self.dirty.clear()
        value = {"waits": self.waits, "timeouts": self.timeouts, "last_at": self.last_at}
        try:
            get_redis().hset(redis_keys.pool_trouble(), self.process, json.dumps(value))
        except Exception:
            self.dirty.set()  # Redis down: the next round tries again
            raise


_trouble: PerProcess[str, _Trouble] = PerProcess(_Trouble, close=lambda t: t.publisher.stop())


def note(process: str, *, timed_out: bool) -> None:
    """One checkout of this process's pool waited (and, if `timed_out`, got no connection)."""
    trouble = _trouble.get(process)
    if timed_out:
        trouble.timeouts += 1
    else:
        trouble.waits += 1
    trouble.last_at = time.time()
    trouble.dirty.set()


def read(now: float) -> dict[str, dict[str, Any]]:
    """Every process's published totals; entries older than FORGET_AFTER_S are dropped."""
    out: dict[str, dict[str, Any]] = {}
    for process, raw in get_redis().hgetall(redis_keys.pool_trouble()).items():
        value = json.loads(raw)
        if now - float(value["last_at"]) > FORGET_AFTER_S:
            get_redis().hdel(redis_keys.pool_trouble(), process)
            continue
        out[str(process)] = value
    return out
