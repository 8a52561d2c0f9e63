"""The `medic_db_pool_*` families, declared once for every process that holds a ledger pool.

Each process counts its own pool under a `process` label (`api:host:pid`, `worker:host:pid`).
The families are made lazily, once per process, and registered nowhere: a worker's main process
serves them from the multiprocess files (worker/runtime/scrape.py), the API from its registry
(api/metrics.py). A wait or a timeout is also told to the control plane
(worker/runtime/pooltrouble.py), which scrapes nothing, for MedicDbPoolSaturated.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from prometheus_client import Counter, Gauge, Metric
from sqlalchemy import event
from sqlalchemy.pool import Pool, QueuePool

from worker.forksafe import PerProcess
from worker.ledger import db
from worker.runtime import pooltrouble
from worker.settings import get_settings


@dataclass(frozen=True)
class PoolFamilies:
    checked_out: Gauge
    capacity: Gauge
    timeouts: Counter
    waits: Counter
    wait_seconds: Counter

    def collect(self) -> Iterator[Metric]:
        for f in fields(self):
            yield from getattr(self, f.name).collect()


def _make_families(_: str) -> PoolFamilies:
    # liveall: the gauges of a process that exited leave the sum (multiprocess mode)
    return PoolFamilies(
        checked_out=Gauge(
            "medic_db_pool_checked_out", "Ledger connections checked out of the process's pool", ["process"],
            multiprocess_mode="liveall", registry=None,
        ),
        capacity=Gauge(
            "medic_db_pool_capacity", "Ledger pool size + overflow", ["process"],
            multiprocess_mode="liveall", registry=None,
        ),
        timeouts=Counter(
            "medic_db_pool_timeouts_total", "Ledger pool checkouts that timed out (MEDIC_DB_POOL_TIMEOUT_SECONDS)",
            ["process"], registry=None,
        ),
        waits=Counter(
            "medic_db_pool_waits_total",
            "Ledger pool checkouts that found every connection checked out and waited (timed out or not)",
            ["process"], registry=None,
        ),
        wait_seconds=Counter(
            "medic_db_pool_wait_seconds_total", "Seconds those checkouts waited", ["process"], registry=None
        ),
    )  # fmt: skip


_families: PerProcess[str, PoolFamilies] = PerProcess(_make_families)


def pool_families() -> PoolFamilies:
    """This process's families, made on first use (after a worker's multiprocess switch)."""
    return _families.get("pool")


def process_label(role: str) -> str:
    """The `process` label: made per call, since a forked child has its own pid."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"


def refresh_from(pool: Pool, role: str) -> None:
    """Set the gauges from the pool itself (a QueuePool; SQLite's has no size)."""
    if isinstance(pool, QueuePool):
        families, process = pool_families(), process_label(role)
        families.checked_out.labels(process).set(pool.checkedout())
        families.capacity.labels(process).set(db.pool_capacity(pool.size()))


class _WaitCounter:
    """Counts this process's pool waits and timeouts under `role`'s label (a hook of the ledger's)."""

    def __init__(self, role: str) -> None:
        self.role = role

    def timed_out(self) -> None:
        process = process_label(self.role)
        pool_families().timeouts.labels(process).inc()
        pooltrouble.note(process, timed_out=True)

    def waited(self, seconds: float) -> None:
        process = process_label(self.role)
        families = pool_families()
        families.waits.labels(process).inc()
        families.wait_seconds.labels(process).inc(seconds)
        pooltrouble.note(process, timed_out=False)


_counters: dict[str, _WaitCounter] = {}


def count_waits(role: str) -> None:
    """Count every wait and timeout of this process's pool (and of the children it forks: the
    ledger's hook lists survive the fork) under `role`'s label; once per role."""
    if role not in _counters:
        counter = _counters[role] = _WaitCounter(role)
        db.pool_timeout_hooks.append(counter.timed_out)
        db.pool_wait_hooks.append(counter.waited)


# --- a worker's checkouts, counted as they happen: its main process serves the children's values


def _worker_process(process: str) -> str:
    pool_families().capacity.labels(process).set(db.pool_capacity(get_settings().db_pool_size))
    return process


_worker: PerProcess[str, str] = PerProcess(_worker_process)


def _on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    pool_families().checked_out.labels(_worker.get(process_label("worker"))).inc()


def _on_checkin(dbapi_connection: Any, record: Any) -> None:
    pool_families().checked_out.labels(_worker.get(process_label("worker"))).dec()


def watch_worker_pools() -> None:
    """Count checkouts, waits and timeouts of every pool of this worker process and the children
    it forks (class-level listeners survive the fork); one mmap write each, no network."""
    if not event.contains(Pool, "checkout", _on_checkout):
        event.listen(Pool, "checkout", _on_checkout)
        event.listen(Pool, "checkin", _on_checkin)
    count_waits("worker")
