"""Seconds from SIGKILL of a worker to its jobs succeeding: medic vs plain Celery, same run.

Both sides: a worker A runs N sleeping jobs, a second worker B idles on the same queue, A's whole
process group is SIGKILLed. medic runs on its production defaults (lease 10 s, heartbeat 2 s,
recover_stuck every 5 s); plain Celery on acks_late + reject_on_worker_lost and its defaults.

    .venv/bin/python -m bench.recovery --jobs 5 --cap 120

Prints one JSON object. Needs PostgreSQL and Redis on 127.0.0.1 (like the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import REDIS_URL, ROOT, MedicRun, header, start_plain_worker, use_plain
from worker.testing.processes import Processes, wait_for
from worker.testing.servers import delete_keys

QUEUE = "bench-recovery"


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2), "max": round(max(values), 2)}


def bench_medic(n: int, job_seconds: float, cap: float, log_dir: Path) -> dict[str, Any]:
    medic = MedicRun("production")
    from worker import JobRequest, enqueue_many
    from worker.ledger import db, queries
    from worker.settings import get_settings

    medic.create()
    procs = Processes(medic.env, log_dir)
    try:
        a = procs.worker("medic-a", queues=QUEUE, concurrency=n)
        procs.control_plane()
        done = enqueue_many([JobRequest("examples.sleep", {"seconds": job_seconds}, queue=QUEUE) for _ in range(n)])
        ids = [d.job.id for d in done]

        def rows() -> list[Any]:
            with db.connect() as conn:
                return [queries.get_job(conn, i) for i in ids]

        wait_for(lambda: all(r.state == "running" for r in rows()), 60, 0.05, "all jobs running on A")
        procs.worker("medic-b", queues=QUEUE, concurrency=n)
        killed = time.time()
        a.kill_group(signal.SIGKILL)
        deadline = time.time() + cap
        while time.time() < deadline and not all(r.state == "succeeded" for r in rows()):
            time.sleep(0.1)
        final = rows()
        ok = [r for r in final if r.state == "succeeded"]
        s = get_settings()
        return {
            "recovered": len(ok),
            "of": n,
            "kill_to_rerun_start_s": summary([r.started_at.timestamp() - killed for r in ok]),
            "kill_to_succeeded_s": summary([r.finished_at.timestamp() - killed for r in ok]),
            "attempts": sorted(r.attempts for r in final),
            "settings": {"lease_s": s.lease_seconds, "heartbeat_s": s.heartbeat_seconds,
                         "presence_ttl_s": s.presence_ttl_seconds, "recover_period_s": s.recover_period_seconds},
        }  # fmt: skip
    finally:
        procs.stop_all()
        medic.drop()


def bench_plain(n: int, job_seconds: float, cap: float, log_dir: Path) -> dict[str, Any]:
    prefix = f"bench-plain-{uuid.uuid4().hex[:8]}:"
    plain = use_plain(prefix)
    records = plain.records
    procs = Processes({**os.environ, "PYTHONPATH": str(ROOT)}, log_dir)
    try:
        a = start_plain_worker(procs, "plain-a", QUEUE, n)
        for _ in range(n):
            plain.plain_sleep.apply_async((job_seconds, uuid.uuid4().hex), queue=QUEUE)
        wait_for(lambda: records.hlen(f"{prefix}started") == n, 60, 0.05, "all tasks started on A")
        start_plain_worker(procs, "plain-b", QUEUE, n)
        killed = time.time()
        a.kill_group(signal.SIGKILL)
        deadline = time.time() + cap
        while time.time() < deadline and records.hlen(f"{prefix}finished") < n:
            time.sleep(0.2)
        finished = {t: float(v) for t, v in records.hgetall(f"{prefix}finished").items()}
        result: dict[str, Any] = {"recovered": len(finished), "of": n, "waited_s": cap}
        if finished:
            result["kill_to_succeeded_s"] = summary([v - killed for v in finished.values()])
        if len(finished) < n:
            result["result"] = f"{n - len(finished)} of {n} not recovered within {cap:.0f} s"
        result["settings"] = {"acks_late": True, "reject_on_worker_lost": True, "visibility_timeout_s": 3600}
        return result
    finally:
        procs.stop_all()
        delete_keys(REDIS_URL, prefix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--job-seconds", type=float, default=8.0)
    parser.add_argument("--cap", type=float, default=120.0, help="Longest wait for recovery, each side.")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="medic-bench-"))
    report = {
        **header("recovery"),
        "jobs": args.jobs,
        "job_seconds": args.job_seconds,
        "medic": bench_medic(args.jobs, args.job_seconds, args.cap, log_dir),
        "plain_celery": bench_plain(args.jobs, args.job_seconds, args.cap, log_dir),
        "logs": str(log_dir),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
