"""The throughput bench's world: its sizes, its queues, and the Bench that owns what it creates.

Every scenario (bench/throughput_enqueue.py, _http.py, _e2e.py) runs against one Bench: a private
medic (bench/medic_run.py: database and key prefixes), a private key prefix for plain Celery, and
the processes it starts. Setup, the reset before every measurement and the teardown live here
once, so the scenarios cannot each clean up a little differently.
"""

from __future__ import annotations

import contextlib
import gc
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from bench.medic_run import REDIS_URL, MedicRun
from worker.testing.processes import Proc, Processes
from worker.testing.servers import delete_keys

HOST = "127.0.0.1"
Q_ENQUEUE = "bench-tp-enqueue"  # (a): nobody consumes it; emptied before every measurement
Q_HTTP = "bench-tp-http"  # (b): likewise
Q_E2E = "bench-tp-e2e"  # (c): one medic worker and one plain worker consume it (each its own prefix)
ECHO_ARGS = {"message": "x"}


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does: FULL for the published numbers, QUICK for a smoke test."""

    rounds: int  # measured rounds per side, alternating
    warmup_s: float  # (a) warm-up per mode
    enqueue_s: float  # (a) duration of one measurement ...
    enqueue_cap: int  # ... and its most jobs
    batch_size: int  # (a) jobs per enqueue_many call, and (c) medic's publish batch
    http_requests: int  # (b) requests per measurement ...
    http_s: float  # ... and its longest duration
    http_threads: int
    http_warmup: int  # (b) requests per side before measuring
    e2e_jobs: int  # (c) jobs per measurement
    e2e_warmup: int
    e2e_cap_s: float  # (c) longest wait for one measurement's jobs to finish
    concurrency: int  # (c) prefork children per worker
    profile_s: float  # py-spy duration of each profile


FULL = Sizes(
    rounds=3,
    warmup_s=0.5,
    enqueue_s=3.0,
    enqueue_cap=50_000,
    batch_size=100,
    http_requests=1200,
    http_s=8.0,
    http_threads=8,
    http_warmup=150,
    e2e_jobs=2000,
    e2e_warmup=200,
    e2e_cap_s=90.0,
    concurrency=2,
    profile_s=6.0,
)
QUICK = Sizes(
    rounds=2,
    warmup_s=0.1,
    enqueue_s=0.3,
    enqueue_cap=2_000,
    batch_size=20,
    http_requests=60,
    http_s=3.0,
    http_threads=4,
    http_warmup=10,
    e2e_jobs=60,
    e2e_warmup=10,
    e2e_cap_s=30.0,
    concurrency=2,
    profile_s=1.0,
)


class Bench:
    """One run's database, Redis prefixes, environment and processes; every scenario uses it."""

    def __init__(self, sizes: Sizes, log_dir: Path, profile: bool = True) -> None:
        self.sizes = sizes
        self.profile = profile
        self.log_dir = log_dir
        run = uuid.uuid4().hex[:8]
        self.plain_prefix = f"bench-plain-{run}:"
        plain_env = {"BENCH_REDIS_URL": REDIS_URL, "BENCH_PLAIN_PREFIX": self.plain_prefix}
        self.medic = MedicRun("production", plain_env, run=run)
        self.r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.procs = Processes(self.medic.env, log_dir)

    # -- setup / teardown

    def setup(self) -> None:
        self.medic.create()
        import bench.plain_celery_app as plain

        plain.app.conf.broker_transport_options = {"global_keyprefix": self.plain_prefix}
        self.plain = plain

    def teardown(self) -> None:
        try:
            self.procs.stop_all()
        finally:
            with contextlib.suppress(Exception):
                self.plain.app.pool.force_close_all()
            self.medic.drop()
            delete_keys(REDIS_URL, self.plain_prefix)

    def stop(self, proc: Proc) -> None:
        """Stop one process now (not at teardown), e.g. an API server once its scenario is done."""
        proc.stop()
        self.procs.procs.remove(proc)

    def reset(self, *queues: str) -> None:
        """An empty ledger and empty queues before each measurement, so every run starts alike."""
        from worker.ledger import db

        with db.begin() as conn:
            conn.execute(sa.text("TRUNCATE jobs CASCADE"))
        for queue in queues:
            for prefix in (self.medic.broker_prefix, self.plain_prefix):
                for key in self.r.scan_iter(match=f"{prefix}{queue}*", count=1000):
                    self.r.delete(key)
        gc.collect()


@contextlib.contextmanager
def background(fn: Callable[[], Any]) -> Iterator[dict[str, Any]]:
    """Run `fn` in a thread for the duration of the block; its return value lands in the dict."""
    holder: dict[str, Any] = {}
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(fn)
        try:
            yield holder
        finally:
            holder["value"] = future.result()
