"""Seconds from SIGKILL of a worker to its jobs succeeding: medic vs plain Celery, same run.

Both sides: a worker A runs N sleeping jobs, a second worker B idles on the same queue, A's whole
process group is SIGKILLed. medic on its production defaults, plain Celery on acks_late +
reject_on_worker_lost and its defaults. Prints one JSON object.

    .venv/bin/python -m bench.recovery --jobs 5 --cap 120
"""

from __future__ import annotations

import json
import signal
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from bench.common import MedicRun, header, options, poll_until, start_plain_worker
from worker.testing.processes import Proc, wait_for

QUEUE = "bench-recovery"


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"min": round(min(values), 2), "median": round(statistics.median(values), 2), "max": round(max(values), 2)}


def kill_and_wait(a: Proc, done: Callable[[], bool], cap: float) -> float:
    """SIGKILL worker A's process group, wait (at most `cap`) until `done()`; the kill's time."""
    killed = time.time()
    a.kill_group(signal.SIGKILL)
    poll_until(done, cap)
    return killed


def bench_medic(medic: MedicRun, n: int, job_seconds: float, cap: float) -> dict[str, Any]:
    from worker import JobRequest, enqueue_many
    from worker.ledger import db, queries
    from worker.settings import get_settings

    a = medic.procs.worker("medic-a", queues=QUEUE, concurrency=n)
    medic.procs.control_plane()
    done = enqueue_many([JobRequest("examples.sleep", {"seconds": job_seconds}, queue=QUEUE)] * n)

    def rows() -> list[Any]:
        with db.connect() as conn:
            return [queries.get_job(conn, d.job.id) for d in done]

    wait_for(lambda: all(r.state == "running" for r in rows()), 60, 0.05, "all jobs running on A")
    medic.procs.worker("medic-b", queues=QUEUE, concurrency=n)
    killed = kill_and_wait(a, lambda: all(r.state == "succeeded" for r in rows()), cap)
    final = rows()
    medic.procs.stop_all()
    ok = [r for r in final if r.state == "succeeded"]
    s = get_settings()
    return {
        "recovered": len(ok),
        "of": n,
        "kill_to_rerun_start_s": spread([r.started_at.timestamp() - killed for r in ok]),
        "kill_to_succeeded_s": spread([r.finished_at.timestamp() - killed for r in ok]),
        "attempts": sorted(r.attempts for r in final),
        "settings": {"lease_s": s.lease_seconds, "heartbeat_s": s.heartbeat_seconds,
                     "presence_ttl_s": s.presence_ttl_seconds, "recover_period_s": s.recover_period_seconds,
                     "lease_margin_s": s.lease_margin_seconds},
    }  # fmt: skip


def bench_plain(medic: MedicRun, n: int, job_seconds: float, cap: float, sender: Any = None) -> dict[str, Any]:
    """`sender`: the Celery app that publishes the tasks (bench/brokers.py: one on RabbitMQ);
    plain.py's own by default."""
    plain, prefix = medic.plain(), medic.plain_prefix
    plain.records.delete(f"{prefix}started", f"{prefix}finished")  # a previous round's
    a = start_plain_worker(medic.procs, "plain-a", QUEUE, n)
    for _ in range(n):
        (sender or plain.celery).send_task("plain.sleep", (job_seconds, uuid.uuid4().hex), queue=QUEUE)
    wait_for(lambda: plain.records.hlen(f"{prefix}started") == n, 60, 0.05, "all tasks started on A")
    start_plain_worker(medic.procs, "plain-b", QUEUE, n)
    killed = kill_and_wait(a, lambda: plain.records.hlen(f"{prefix}finished") >= n, cap)
    finished = [float(v) for v in plain.records.hvals(f"{prefix}finished")]
    result: dict[str, Any] = {"recovered": len(finished), "of": n, "waited_s": cap}
    if finished:
        result["kill_to_succeeded_s"] = spread([v - killed for v in finished])
    if len(finished) < n:
        result["result"] = f"{n - len(finished)} of {n} not recovered within {cap:.0f} s"
    result["settings"] = {"acks_late": True, "reject_on_worker_lost": True, "visibility_timeout_s": 3600}
    return result


def main() -> None:
    args = options(__doc__, jobs=5, job_seconds=8.0, cap=120.0)
    report: dict[str, Any] = {
        **header("recovery"),
        "jobs": args.jobs,
        "job_seconds": args.job_seconds,
    }
    with MedicRun("production") as medic:
        report["medic"] = bench_medic(medic, args.jobs, args.job_seconds, args.cap)
        report["plain_celery"] = bench_plain(medic, args.jobs, args.job_seconds, args.cap)
    report["logs"] = str(medic.log_dir)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
