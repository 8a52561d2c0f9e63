"""SIGTERM is a warm shutdown with a deadline (worker/runtime/shutdown.py): short jobs finish,
long ones are killed and handed back at once, prefetched messages go back to the queue, and a
rolling restart under load loses nothing and runs nothing twice at once.

The jobs are `nemesis.tick` (tests/nemesis/jobs.py): each execution appends start / tick / end
lines to its host's history file, outside the ledger; the nemesis checker reads them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import tests.chaos.shutdown_jobs  # registers shutdown.* for submit()
import tests.nemesis.jobs  # noqa: F401 - registers nemesis.tick for submit()
from tests.brokers.selected import Broker
from tests.chaos.conftest import TERMINAL, submit, wait_job
from tests.ledger_view import assert_no_overlap, job
from tests.nemesis import checker
from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.ledger import db, queries
from worker.ledger.models import jobs
from worker.testing.processes import Proc, Processes, wait_for

JOB_MODULES = "worker.examples,tests.testjobs,tests.nemesis.jobs,tests.chaos.shutdown_jobs"
LONG_S = 2.5  # a rolling-restart job longer than its workers' grace (1 s)
LEASE_S = 10.0  # far longer than the grace: a hand-back at the lease's pace is plain to see


def worker_env(host: str, grace_s: float) -> dict[str, str]:
    return {
        "MEDIC_JOB_MODULES": JOB_MODULES,
        "MEDIC_SHUTDOWN_GRACE_SECONDS": str(grace_s),
        "MEDIC_LEASE_SECONDS": str(LEASE_S),
        "NEMESIS_HOST": host,
    }


def history(log_dir: Path) -> list[checker.Execution]:
    lines = [line for f in sorted(log_dir.glob("hosts/*/history.jsonl")) for line in checker.read_jsonl(f)]
    return checker.executions(lines)


def events(job_id: uuid.UUID) -> list[Any]:
    with db.connect() as conn:
        return queries.get_events(conn, job_id)


def sigterm(proc: Proc) -> None:
    """SIGTERM to the worker's main process only, as Kubernetes sends it to PID 1."""
    os.kill(proc.pid, signal.SIGTERM)


def exit_code(proc: Proc, timeout: float = 40) -> int:
    return wait_for(lambda: (rc := proc.popen.poll()) is not None and (rc,), timeout, 0.1, f"{proc.name} exits")[0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def test_a_job_longer_than_the_grace_is_handed_back_at_once_and_its_process_killed(
    broker: Broker, cprocs: Processes, tmp_path: Path
) -> None:
    """Given a 20 s job on worker A (grace 2 s, lease 10 s), its last attempt, a second worker B
    and the control loops,
    When A gets SIGTERM,
    Then A kills the job's process and hands the job back before its lease could have expired,
    B runs it to success, and the first execution wrote nothing after the hand-back."""
    a = cprocs.worker("sd-long-a", queues="chaos-sd1", concurrency=1, **worker_env("a", 2))
    cprocs.control_plane(MEDIC_LEASE_SECONDS=str(LEASE_S))
    job_id = submit("nemesis.tick", {"seconds": 20, "log_dir": str(tmp_path)}, queue="chaos-sd1", max_attempts=1)
    first = wait_for(lambda: history(tmp_path), 30, 0.05, "the first execution started")[0]
    cprocs.worker("sd-long-b", queues="chaos-sd1", concurrency=1, **worker_env("b", 2))
    running = job(job_id)
    assert running.state == "running" and running.worker is not None and running.worker.startswith("sd-long-a@")
    lease_at_sigterm = running.lease_expires_at  # the lease only moves forward while A holds the job
    assert lease_at_sigterm is not None
    sigterm(a)

    done = wait_job(job_id, TERMINAL, timeout=60)
    evs = events(job_id)
    reasons = [e.reason for e in evs]
    handed = next(e for e in evs if e.from_state == "running")  # the first delivery's end
    assert (handed.reason, handed.to_state) == ("worker_shutdown", "queued"), (
        f"{reasons}: the first delivery ended ({handed.reason}) at {handed.at}; lease at SIGTERM {lease_at_sigterm}"
    )
    assert handed.at < lease_at_sigterm, f"handed back at {handed.at}, not before the lease ({lease_at_sigterm})"
    rerun = [e for e in evs if e.reason == "claimed"][1]
    assert rerun.at < lease_at_sigterm, f"re-run at {rerun.at}, not before the lease ({lease_at_sigterm})"
    assert reasons.count("worker_shutdown") == 1, reasons
    assert "worker_lost" not in reasons, "the killed child is no failure of the job, and reported once"
    assert done.state == "succeeded", done
    assert done.worker is not None and done.worker.startswith("sd-long-b@")
    assert (done.attempts, done.max_attempts) == (2, 2), "the shutdown cost no attempt (max_attempts 1, not dead)"
    assert exit_code(a) == 0, a.log()

    runs = history(tmp_path)
    assert [(r.host, r.ended) for r in runs] == [("a", False), ("b", True)], runs
    assert runs[0].pid == first.pid and not alive(first.pid), "the first execution's process is dead"
    assert runs[0].last < handed.at.timestamp(), "the first execution wrote a line after its hand-back"
    assert checker.overlaps(runs, {}) == []
    assert_no_overlap([job_id])


def test_a_job_shorter_than_the_grace_finishes_during_the_warm_shutdown(
    broker: Broker, cprocs: Processes, tmp_path: Path
) -> None:
    """Given a 2 s job running on worker A (grace 15 s), When A gets SIGTERM,
    Then the job finishes there, once, and A exits."""
    a = cprocs.worker("sd-short-a", queues="chaos-sd2", concurrency=1, **worker_env("a", 15))
    job_id = submit("nemesis.tick", {"seconds": 2, "log_dir": str(tmp_path)}, queue="chaos-sd2")
    wait_for(lambda: history(tmp_path), 30, 0.05, "the execution started")
    sigterm_at = time.time()
    sigterm(a)

    assert exit_code(a) == 0, a.log()
    done = job(job_id)
    assert done.state == "succeeded", done
    assert done.worker is not None and done.worker.startswith("sd-short-a@")
    assert done.attempts == 1
    assert [e.reason for e in events(job_id)] == ["enqueued", "claimed", "succeeded"]
    runs = history(tmp_path)
    assert len(runs) == 1 and runs[0].ended, runs
    assert runs[0].last > sigterm_at, "the job was still running when SIGTERM came"
    assert_no_overlap([job_id])


def _broker_lists(queue: str) -> tuple[set[str], set[str]]:
    """Delivery ids waiting in `queue`'s lists, and those held unacknowledged by some worker."""
    r = get_redis()
    lists = [raw for key in redis_keys.queue_lists(queue) for raw in r.lrange(key, 0, -1)]
    waiting = {json.loads(raw)["headers"]["id"] for raw in lists}
    held = {json.loads(raw)[0]["headers"]["id"] for raw in r.hvals(redis_keys.unacked())}
    return waiting, held


def test_a_prefetched_message_goes_back_to_the_queue(cprocs: Processes) -> None:
    """Given a retry whose message worker A holds unacknowledged until its ETA (4 s back-off),
    When A gets SIGTERM, Then the message is back in the queue's list once A is gone, and a
    worker started later runs it (no control loop re-sends anything here)."""
    a = cprocs.worker("sd-eta-a", queues="chaos-sd3", concurrency=1, **worker_env("a", 2))
    job_id = submit("shutdown.fail_once", {"tag": uuid.uuid4().hex}, queue="chaos-sd3", max_attempts=3)
    retry = wait_for(lambda: (r := job(job_id)).state == "queued" and r.attempts == 1 and r, 30, 0.05, "retry")
    delivery = str(retry.delivery_id)
    wait_for(lambda: delivery in _broker_lists("chaos-sd3")[1], 10, 0.05, "A holds the retry's message")
    sigterm(a)

    assert exit_code(a) == 0, a.log()
    waiting, held = _broker_lists("chaos-sd3")
    assert delivery in waiting and delivery not in held, (delivery, waiting, held)
    cprocs.worker("sd-eta-b", queues="chaos-sd3", concurrency=1, **worker_env("b", 2))
    done = wait_job(job_id, TERMINAL, timeout=30)
    assert done.state == "succeeded" and done.worker is not None and done.worker.startswith("sd-eta-b@"), done
    assert done.attempts == 2
    assert_no_overlap([job_id])


class Load:
    """Submits nemesis.tick jobs at a steady rate from a thread, bounded in count."""

    def __init__(self, log_dir: Path, queue: str, per_second: float, limit: int, seed: int) -> None:
        self.log_dir, self.queue, self.period, self.limit = log_dir, queue, 1 / per_second, limit
        self.rng = random.Random(seed)
        self.accepted: list[uuid.UUID] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def seconds(self) -> float:
        """Mostly short jobs; one in 8 longer than the grace, so some are handed back."""
        return LONG_S if self.rng.random() < 1 / 8 else self.rng.uniform(0.1, 0.6)

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set() and len(self.accepted) < self.limit:
            args = {"seconds": round(self.seconds(), 2), "log_dir": str(self.log_dir)}
            self.accepted.append(submit("nemesis.tick", args, queue=self.queue, max_attempts=1))
            next_at += self.period
            self.stop.wait(max(0.0, next_at - time.monotonic()))


def running_long_job(worker: str) -> bool:
    """`worker` is running a job longer than its grace (so its SIGTERM hands one back)."""
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(jobs.c.args).where(jobs.c.state == "running", jobs.c.worker.like(f"{worker}@%"))
        ).all()
    return any(float(r.args["seconds"]) >= LONG_S for r in rows)


@pytest.mark.timeout(300)
def test_a_rolling_restart_under_load_loses_nothing_and_runs_nothing_twice(
    broker: Broker, cprocs: Processes, tmp_path: Path
) -> None:
    """Given 3 workers (grace 1 s) and jobs submitted at 10/s, each of them its last attempt,
    When each worker in turn gets SIGTERM, exits, and is replaced,
    Then every job ran to its end line and succeeded once in the ledger, and no two executions
    of one job were live at the same time (no control loop runs: nothing is healed by a lease)."""
    queue = "chaos-sd4"
    workers = [cprocs.worker(f"sd-roll-{i}", queues=queue, concurrency=3, **worker_env(f"w{i}", 1)) for i in range(3)]
    load = Load(tmp_path, queue, per_second=10, limit=600, seed=19)
    load.thread.start()
    try:
        wait_for(lambda: len(load.accepted) >= 20, 30, 0.1, "load under way")
        for i, w in enumerate(workers):
            wait_for(lambda name=w.name: running_long_job(name), 30, 0.05, f"{w.name} runs a job longer than the grace")
            sigterm(w)
            assert exit_code(w) == 0, w.log()
            cprocs.worker(f"sd-roll-{i}b", queues=queue, concurrency=3, **worker_env(f"w{i}b", 1))
        wait_for(lambda: len(load.accepted) >= 40, 30, 0.1, "load after the restarts")
    finally:
        load.stop.set()
        load.thread.join(30)
    accepted = list(load.accepted)

    def states() -> dict[str, str]:
        with db.connect() as conn:
            return {str(j): (r.state if (r := queries.get_job(conn, j)) else "missing") for j in accepted}

    wait_for(lambda: all(s in TERMINAL for s in states().values()), 120, 0.5, "every job finished")
    runs = history(tmp_path)
    ended = {r.job for r in runs if r.ended}
    assert checker.lost([str(j) for j in accepted], states()) == []
    assert [str(j) for j in accepted if str(j) not in ended] == [], "accepted jobs without a finished execution"
    assert checker.overlaps(runs, {}) == []
    with db.connect() as conn:
        evs = [e for j in accepted for e in queries.get_events(conn, j)]
    finishes = [checker.LedgerEvent(str(e.job_id), e.to_state, e.reason, str(e.delivery_id), e.attempt, 0) for e in evs]
    assert checker.duplicate_finishes(finishes) == {}
    assert_no_overlap(accepted)
    handed_back = sum(e.reason == "worker_shutdown" for e in evs)
    assert handed_back >= 1, "no restart found a job running past the grace"
    print(f"rolling restart: {len(accepted)} jobs, {len(runs)} executions, {handed_back} handed back")
