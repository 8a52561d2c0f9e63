"""The worker's two ledger writes per job (claim, then succeed), in process, with the hot
statements prepared per connection (MEDIC_DB_PREPARED_STATEMENTS, the default) and without.

Run: `.venv/bin/python -m bench.hot_writes [--jobs 2000 --rounds 3] > docs/bench/hot_writes.json`

Per job: wall time, this process's CPU and the PostgreSQL backend's CPU (from /proc/<pid>/stat
of the connection's server process: the pool is one connection, so every write uses it).
Rounds alternate the two modes after a warm-up; the JSON keeps every raw figure and the load
before each round. One process, one connection: the figures isolate the statement path, not
a worker's throughput (bench.throughput measures that).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.medic_run import MedicRun
from bench.profiling import load_check
from bench.stats import summary

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _round(jobs: int) -> dict[str, float]:
    """claim + succeed of `jobs` fresh jobs, one connection; ms per job."""
    import sqlalchemy as sa

    from worker.clock import utcnow
    from worker.ledger import db, transitions
    from worker.settings import get_settings
    from worker.submit import JobRequest, build_row

    s, now = get_settings(), utcnow()
    rows = [build_row(JobRequest("examples.echo", {"message": "x"}, queue="bench-hw"), tenant="hw", s=s, now=now)
            for _ in range(jobs)]  # fmt: skip
    for start in range(0, jobs, 500):
        db.write(lambda c, part=rows[start : start + 500]: transitions.create_jobs(c, part, actor="bench", now=now))
    backend = db.write(lambda c: int(c.scalar(sa.text("SELECT pg_backend_pid()"))))
    wall0, cpu0, be0 = time.perf_counter(), time.process_time(), _cpu_s(backend)
    for r in rows:
        job = db.write(
            lambda c, r=r: transitions.claim(c, r["id"], r["delivery_id"], worker="w", pid=1, now=utcnow(), lease_s=30),
            sync_commit=False,
        )
        assert job is not None
        done = db.write(lambda c, j=job: transitions.succeed(c, j.id, j.delivery_id, None, actor="w:1", now=utcnow()))
        assert done is not None and done.state == "succeeded"
    wall, cpu, be = time.perf_counter() - wall0, time.process_time() - cpu0, _cpu_s(backend) - be0
    with db.begin() as conn:
        conn.execute(sa.text("DELETE FROM job_events"))
        conn.execute(sa.text("DELETE FROM jobs"))
    return {"wall_ms": wall / jobs * 1000, "client_cpu_ms": cpu / jobs * 1000, "postgres_cpu_ms": be / jobs * 1000}


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def _set_mode(prepared: bool) -> None:
    from worker.ledger.db import dispose_engine
    from worker.settings import reset_settings

    os.environ["MEDIC_DB_PREPARED_STATEMENTS"] = "true" if prepared else "false"
    reset_settings()
    dispose_engine()  # a fresh connection: nothing prepared by the other mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run = MedicRun("production", {"MEDIC_DB_POOL_SIZE": "1"})
    started = time.time()
    raw: dict[str, list[dict[str, float]]] = {"prepared": [], "not_prepared": []}
    loads: list[dict[str, Any]] = []
    try:
        run.create()
        for mode in ("prepared", "not_prepared"):  # warm-up, not recorded
            _set_mode(mode == "prepared")
            _round(200)
        for _ in range(args.rounds):
            loads.append(load_check())
            for mode in ("prepared", "not_prepared"):
                _set_mode(mode == "prepared")
                raw[mode].append(_round(args.jobs))
    finally:
        run.drop()
    out: dict[str, Any] = {
        "bench": "hot_writes",
        "command": " ".join([os.path.basename(sys.executable), "-m", "bench.hot_writes", *sys.argv[1:]]),
        "what": "claim (async commit) + succeed (sync commit) per job, one connection, in process",
        "code": {
            "head": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
        },
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
