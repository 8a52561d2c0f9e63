"""The worker's two ledger writes per job (claim, then succeed), in process, with the hot
statements prepared per connection (MEDIC_DB_PREPARED_STATEMENTS, the default) and without.

    .venv/bin/python -m bench.hot_writes [--jobs 2000 --rounds 3] > docs/bench/hot_writes.json

One process, one connection (so every write uses the same PostgreSQL backend, whose CPU is read):
the figures isolate the statement path, not a worker's throughput. Rounds alternate the two modes
after a warm-up, the load recorded before each.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import sqlalchemy as sa

from bench.common import MedicRun, header, load_check, options, proc_cpu, summary

QUEUE = "bench-hw"
MODES = {"prepared": True, "not_prepared": False}


def one_round(jobs: int) -> dict[str, float]:
    """claim + succeed of `jobs` fresh jobs (enqueued first, not timed); ms per job."""
    from worker import JobRequest, enqueue_many
    from worker.clock import utcnow
    from worker.ledger import db, transitions

    for start in range(0, jobs, 500):
        enqueue_many([JobRequest("examples.echo", {"message": "x"}, queue=QUEUE)] * min(500, jobs - start))
    with db.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, delivery_id FROM jobs WHERE state = 'queued'")).all()
        backend = int(conn.scalar(sa.text("SELECT pg_backend_pid()")))
    wall0, cpu0, pg0 = time.perf_counter(), time.process_time(), proc_cpu(backend) or 0.0
    for job_id, delivery_id in rows:
        job = db.write(
            lambda c, i=job_id, d=delivery_id: transitions.claim(c, i, d, worker="w", pid=1, now=utcnow(), lease_s=30),
            sync_commit=False,
        )
        assert job is not None
        done = db.write(lambda c, j=job: transitions.succeed(c, j.id, j.delivery_id, None, actor="w:1", now=utcnow()))
        assert done is not None and done.state == "succeeded"
    wall, cpu, pg = time.perf_counter() - wall0, time.process_time() - cpu0, (proc_cpu(backend) or 0.0) - pg0
    with db.begin() as conn:
        conn.execute(sa.text("TRUNCATE jobs CASCADE"))
    return {"wall_ms": wall / jobs * 1000, "client_cpu_ms": cpu / jobs * 1000, "postgres_cpu_ms": pg / jobs * 1000}


def set_mode(prepared: bool) -> None:
    from worker.ledger.db import dispose_engine
    from worker.settings import reset_settings

    os.environ["MEDIC_DB_PREPARED_STATEMENTS"] = "true" if prepared else "false"
    reset_settings()
    dispose_engine()  # a fresh connection: nothing prepared by the other mode


def main() -> None:
    args = options(__doc__, jobs=2000, rounds=3)
    started = time.time()
    raw: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    loads = []
    with MedicRun("production", {"MEDIC_DB_POOL_SIZE": "1"}):
        for prepared in MODES.values():  # warm-up, not recorded
            set_mode(prepared)
            one_round(200)
        for _ in range(args.rounds):
            loads.append(load_check())
            for mode, prepared in MODES.items():
                set_mode(prepared)
                raw[mode].append(one_round(args.jobs))
    out: dict[str, Any] = {
        **header("hot_writes"),
        "what": "claim (async commit) + succeed (sync commit) per job, one connection, in process",
        "jobs_per_round": args.jobs,
        "order": f"{args.rounds} rounds of prepared, not_prepared after a warm-up of 200 jobs each",
        "load_before_each_round": loads,
        "elapsed_s": round(time.time() - started, 1),
    }
    for mode, runs in raw.items():
        out[mode] = {k: summary([r[k] for r in runs], higher_is_better=False, digits=3) for k in runs[0]}
    out["gain_on_median"] = {
        k: round(1 - out["prepared"][k]["median"] / out["not_prepared"][k]["median"], 3) for k in raw["prepared"][0]
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
