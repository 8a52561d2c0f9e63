"""The `process` scaler's supervisor half: `medic up` keeps as many single-slot worker processes for a
queue as the autoscaler asks for (in Redis), and reports how many it runs.

Scaling down stops a worker with SIGTERM: a warm shutdown lets its running job finish within
MEDIC_SHUTDOWN_GRACE_SECONDS, else hands it back at once to run elsewhere (worker/runtime/shutdown.py).
"""

from __future__ import annotations

import logging
import time

from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.ops import processes
from worker.ops.supervisor import Child, Supervisor
from worker.settings import get_settings

log = logging.getLogger("medic.up")

PREFIX = "auto-worker-"


class ProcessScalerPool:
    def __init__(self, supervisor: Supervisor, queue: str, every_s: float = 1.0) -> None:
        self.supervisor = supervisor
        self.queue = queue
        self.every_s = every_s
        self._next_check = 0.0
        self._serial = 0

    def _live(self) -> list[Child]:
        return [c for c in self.supervisor.children if c.name.startswith(PREFIX)]

    def desired(self) -> int:
        s = get_settings()
        value = get_redis().hget(redis_keys.scale(self.queue), "desired")
        wanted = int(value) if value is not None else s.min_concurrency
        return max(1, s.min_concurrency, min(s.max_concurrency, wanted))

    def __call__(self) -> None:
        """Called on every supervisor tick; acts about once a second."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.every_s
        desired, live = self.desired(), self._live()
        while len(live) < desired:
            self._serial += 1
            name = f"{PREFIX}{self._serial}"
            self.supervisor.add(Child(name, processes.worker_cmd(self.queue, 1, name)))
            log.info("autoscale: started %s for %s (%d -> %d)", name, self.queue, len(live), len(live) + 1)
            live = self._live()
        while len(live) > desired:
            newest = live[-1]
            log.info("autoscale: stopping %s for %s (%d -> %d)", newest.name, self.queue, len(live), len(live) - 1)
            self.supervisor.remove(newest.name)
            live = self._live()
        get_redis().hset(redis_keys.scale(self.queue), "processes", len(live))
