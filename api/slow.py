"""Time spent in the ledger per request, for the slow-request log.

SQLAlchemy's cursor events (registered on the Engine class, so the per-process engine made after
a fork has them too) add each statement's time to a mutable cell in a context variable. A sync
route runs in a worker thread with a copy of the request's context, so the cell (not the
variable) is what carries the time back.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from worker.background import BackgroundThread
from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.ledger import db

log = logging.getLogger(__name__)

ledger_seconds: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("ledger_seconds", default=None)


def start() -> list[float]:
    cell = [0.0]
    ledger_seconds.set(cell)
    return cell


@event.listens_for(Engine, "before_cursor_execute")
def _before(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool) -> None:
    conn.info.setdefault("medic_started", []).append(time.perf_counter())


@event.listens_for(Engine, "after_cursor_execute")
def _after(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool) -> None:
    stack = conn.info.get("medic_started")
    if not stack:
        return
    elapsed = time.perf_counter() - stack.pop()
    cell = ledger_seconds.get()
    if cell is not None:
        cell[0] += elapsed


# --- recent latency, published for the MedicApiSlow rule (the health loop reads every process's)

WINDOW_S = 60.0
PUBLISH_EVERY_S = 5.0
POOL_SAMPLE_S = 0.1
MAX_SAMPLES = 5000


class LatencyWindow:
    """The last minute of request durations of this process; a thread publishes its p95."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)
        self.pool_full = 0  # samples (every POOL_SAMPLE_S) with every pool connection checked out
        self.pool_samples = 0
        self.next_publish = 0.0
        self.thread: BackgroundThread | None = None
        self._start_lock = threading.Lock()

    def add(self, seconds: float) -> None:
        self.samples.append((time.monotonic(), seconds))
        if self.thread is None:
            self._start()

    def _start(self) -> None:
        """The thread of the process that serves requests, started by the first one."""
        with self._start_lock:
            if self.thread is None:
                self.next_publish = time.monotonic() + PUBLISH_EVERY_S
                self.thread = BackgroundThread("medic-api-latency", self.tick, every_s=POOL_SAMPLE_S, logger=log)
                self.thread.start()

    def p95(self) -> tuple[float, int]:
        """(p95 in ms, samples) of the window."""
        cutoff = time.monotonic() - WINDOW_S
        recent = sorted(s for at, s in list(self.samples) if at >= cutoff)
        if not recent:
            return 0.0, 0
        return recent[min(len(recent) - 1, int(0.95 * len(recent)))] * 1000, len(recent)

    def sample_pool(self) -> None:
        """Is this process's pool used up right now? An attribute read, no I/O. Sampled in the
        process itself: the server's view (pg_stat_activity) is taken by a loop that a slow
        ledger delays until the pool is free again."""
        pool = db.get_engine().pool
        if isinstance(pool, QueuePool):
            self.pool_samples += 1
            self.pool_full += pool.checkedout() >= db.pool_capacity(pool.size())

    def publish(self) -> None:
        p95, n = self.p95()
        full = self.pool_full / self.pool_samples if self.pool_samples else 0.0
        self.pool_full = self.pool_samples = 0
        value = json.dumps({"p95_ms": round(p95, 1), "n": n, "at": time.time(), "pool_full": round(full, 3)})
        get_redis().hset(redis_keys.api_latency(), f"{socket.gethostname()}:{os.getpid()}", value)

    def tick(self) -> None:
        """Sample the pool; publish every PUBLISH_EVERY_S (a failed publish waits for the next)."""
        self.sample_pool()
        if time.monotonic() >= self.next_publish:
            self.next_publish += PUBLISH_EVERY_S
            self.publish()


window = LatencyWindow()
