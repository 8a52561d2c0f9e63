"""One bench run's private medic and plain-Celery worker command, shared by every bench.

Each bench runs medic against its own database `medic_bench_<run>` and Redis key prefixes
`bench<run>:` / `benchb<run>:` on the shared PostgreSQL and Redis, so runs never meet each other
or the tests. Creating and removing them lives here once, so no bench can leave a database or
keys behind in a way the others do not.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from pathlib import Path

from worker.testing.servers import delete_keys, pg_admin_execute

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/0"


class MedicRun:
    """The database, key prefixes and environment of one run of medic (`MEDIC_PROFILE=profile`).

    Building it puts the environment into os.environ too, so medic code imported in this process
    (enqueue, the ledger) talks to the same database and prefixes as the processes it starts."""

    def __init__(self, profile: str, extra_env: dict[str, str] | None = None, run: str | None = None) -> None:
        self.run = run or uuid.uuid4().hex[:8]
        self.db_name = f"medic_bench_{self.run}"
        self.db_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.db_name}"
        self.key_prefix = f"bench{self.run}:"
        self.broker_prefix = f"benchb{self.run}:"
        self.env = {
            **os.environ,
            "MEDIC_DATABASE_URL": self.db_url,
            "MEDIC_REDIS_URL": REDIS_URL,
            "MEDIC_KEY_PREFIX": self.key_prefix,
            "MEDIC_BROKER_KEY_PREFIX": self.broker_prefix,
            "MEDIC_PROFILE": profile,
            "MEDIC_JOB_MODULES": "worker.examples",  # the benches run the demo jobs
            "MEDIC_ALLOW_EXAMPLE_JOBS": "true",
            "MEDIC_QUEUES": "bench-*,flood",  # queues are declared: the benches' own
            **(extra_env or {}),
            "PYTHONPATH": str(ROOT),
        }
        os.environ.update(self.env)

    def create(self) -> None:
        """Settings and Celery re-read from the environment; the database created and migrated."""
        from worker.broker.celery_app import reconfigure
        from worker.ledger.migrate import upgrade
        from worker.settings import reset_settings

        reset_settings()
        reconfigure()
        upgrade(self.db_url)

    def drop(self) -> None:
        """The database and every key of the run gone; call after its processes are stopped."""
        with contextlib.suppress(Exception):  # the database and keys must go even so
            from worker.ledger.db import dispose_engine

            dispose_engine()
        pg_admin_execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        for prefix in (self.key_prefix, self.broker_prefix):
            delete_keys(REDIS_URL, prefix)


def plain_worker_argv(queue: str, concurrency: int, name: str) -> list[str]:
    """A plain Celery worker of bench/plain_celery_app.py on `queue`, prefork with `concurrency`."""
    argv = [sys.executable, "-m", "celery", "-A", "bench.plain_celery_app:app", "worker", "-Q", queue]
    return [*argv, "-c", str(concurrency), "-n", name, "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
