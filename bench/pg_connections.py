"""PostgreSQL server connections a medic stack holds, straight to PostgreSQL and behind PgBouncer in
transaction mode: the connection budget's figures for docs/deploy.md.

One stack per side, the same both times: `--workers` prefork workers of `--concurrency` children,
the API, a control worker and beat, pool sizes as `medic worker` / `medic control` set them. Each
side is sampled (`pg_stat_activity` rows of its database, every 50 ms, from a connection to the
maintenance database so the sampler is not counted) while idle and while `--jobs` jobs are
submitted over HTTP by `--clients` threads and run. Behind PgBouncer the clients medic holds are
read from PgBouncer's `SHOW CLIENTS` too. Writes docs/bench/pg_connections.json.

    .venv/bin/python -m bench.pg_connections --workers 3 --concurrency 2 --jobs 400
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import REDIS_URL, ROOT, header, load_check, options, poll_until
from worker.testing.pgbouncer import PrivatePgBouncer
from worker.testing.processes import Processes
from worker.testing.servers import PG_ADMIN_URL, delete_keys, pg_admin_execute

QUEUE = "bench-connections"
OUT = ROOT / "docs" / "bench" / "pg_connections.json"
BASE_ENV = {
    "MEDIC_PROFILE": "production",
    "MEDIC_REDIS_URL": REDIS_URL,
    "MEDIC_JOB_MODULES": "worker.examples",
    "MEDIC_ALLOW_EXAMPLE_JOBS": "true",
    "MEDIC_QUEUES": "bench-*",
    "PYTHONPATH": str(ROOT),
}


class Sampler:
    """Counts, every `interval` s in a thread, until stopped: the peak and the last reading."""

    def __init__(self, read: Callable[[], int], interval: float = 0.05) -> None:
        self.read, self.interval = read, interval
        self.values: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.values.append(self.read())
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def summary(self) -> dict[str, int]:
        return {"peak": max(self.values, default=0), "last": self.values[-1] if self.values else 0}


def server_count(admin: sa.Engine, database: str) -> Callable[[], int]:
    query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d")

    def read() -> int:
        with admin.connect() as conn:
            return int(conn.scalar(query, {"d": database}) or 0)

    return read


def client_count(bouncer: PrivatePgBouncer, database: str) -> Callable[[], int]:
    return lambda: sum(1 for c in bouncer.admin("SHOW CLIENTS") if c["database"] == database)


@contextlib.contextmanager
def ledger(url: str, database: str, prefix: str) -> Iterator[None]:
    """This process pointed at the side's ledger as the stack reaches it (to make an API key and
    poll the jobs: behind PgBouncer its connection is pooled with the stack's)."""
    from worker.ledger.db import dispose_engine
    from worker.ledger.migrate import upgrade
    from worker.settings import reset_settings

    os.environ.update(
        {"MEDIC_DATABASE_URL": url, "MEDIC_KEY_PREFIX": prefix, "MEDIC_BROKER_KEY_PREFIX": broker_prefix(prefix)}
    )
    reset_settings()
    upgrade(url)
    try:
        yield
    finally:
        dispose_engine()
        pg_admin_execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        delete_keys(REDIS_URL, prefix)
        delete_keys(REDIS_URL, broker_prefix(prefix))


def broker_prefix(prefix: str) -> str:
    """The broker's keys beside medic's, never under them (a queue under medic's prefix is refused)."""
    return prefix.replace(":bench", ":benchb", 1)


def submit_all(api: str, key: str, jobs: int, clients: int) -> list[str]:
    body = {"type": "examples.sleep", "args": {"seconds": 0.05}, "queue": QUEUE}

    def one(_: int) -> str:
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            r = c.post("/jobs", json=body)
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(jobs)))


def unfinished(ids: list[str]) -> int:
    from worker.ledger import db
    from worker.ledger.models import jobs

    with db.connect() as conn:
        q = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.state != "succeeded")
        return int(conn.scalar(q) or 0)


def side(name: str, args: Any, bouncer: PrivatePgBouncer | None) -> dict[str, Any]:
    """One stack, idle then loaded; its connection counts."""
    from worker.ledger import apikeys, db
    from worker.ops import budget
    from worker.settings import get_settings

    run = uuid.uuid4().hex[:6]
    database, prefix = f"medic_pgb_bench_{name}_{run}", f"pgb:bench{run}:"
    direct = str(sa.engine.make_url(PG_ADMIN_URL).set(database=database).render_as_string(hide_password=False))
    url = bouncer.url(database, PG_ADMIN_URL) if bouncer else direct  # migrated through it too
    env = {
        **os.environ,
        "MEDIC_DATABASE_URL": url,
        "MEDIC_DB_PREPARED_STATEMENTS": "false" if bouncer else "true",
        "MEDIC_KEY_PREFIX": prefix,
        "MEDIC_BROKER_KEY_PREFIX": broker_prefix(prefix),
    }
    admin = sa.create_engine(PG_ADMIN_URL, poolclass=sa.pool.NullPool)
    counts = {"servers": server_count(admin, database)}
    if bouncer:
        counts["medic_clients"] = client_count(bouncer, database)
    os.environ["MEDIC_DB_PREPARED_STATEMENTS"] = env["MEDIC_DB_PREPARED_STATEMENTS"]
    procs = Processes(env, Path(os.environ.get("TMPDIR", "/tmp")))
    report: dict[str, Any] = {"load_before": load_check()}
    with ledger(url, database, prefix):
        s = get_settings()
        pool = str(budget.worker_pool_size(s))
        try:
            for i in range(args.workers):
                procs.worker(f"conn-{name}-{i}", queues=QUEUE, concurrency=args.concurrency, MEDIC_DB_POOL_SIZE=pool)
            procs.control(MEDIC_DB_POOL_SIZE=pool)
            procs.beat()
            _, api = procs.api()
            with db.begin() as conn:
                key = apikeys.create_key(conn, "bench", apikeys.parse_scopes("submit,read"))
            for what in ("idle", "loaded"):
                samplers = {k: Sampler(read) for k, read in counts.items()}
                with contextlib.ExitStack() as stack:
                    for sampler in samplers.values():
                        stack.enter_context(sampler)
                    if what == "idle":
                        time.sleep(args.idle_seconds)
                    else:
                        started = time.monotonic()
                        ids = submit_all(api, key, args.jobs, args.clients)
                        report["all_succeeded"] = poll_until(lambda ids=ids: unfinished(ids) == 0, args.cap)
                        report["loaded_seconds"] = round(time.monotonic() - started, 2)
                report[what] = {k: v.summary() for k, v in samplers.items()}
            shares = budget.stack_shares(s, workers=args.workers, concurrency=args.concurrency)
            report["budget_counted"] = sum(share.connections for share in shares)
        finally:
            procs.stop_all()
            admin.dispose()
    return report


def main() -> None:
    args = options(__doc__ or "", workers=3, concurrency=2, jobs=400, clients=8, idle_seconds=3.0, cap=120.0,
                   pool_size=10)  # fmt: skip
    os.environ.update(BASE_ENV)
    report = header("pg_connections")
    report["params"] = {k: v for k, v in vars(args).items()}
    report["sides"] = {"direct": side("direct", args, None)}
    bouncer = PrivatePgBouncer(pool_size=args.pool_size)
    bouncer.start()
    try:
        report["sides"]["pgbouncer"] = side("pgbouncer", args, bouncer)
    finally:
        bouncer.stop()
    report["load_average_1m_at_end"] = os.getloadavg()[0]
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
