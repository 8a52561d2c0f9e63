"""The control plane doubled or killed: each stuck job is recovered exactly once, and loops resume."""

from __future__ import annotations

import signal
import uuid

import sqlalchemy as sa

from worker.clock import utcnow
from worker.control.loop import loop_stats
from worker.ledger import db, transitions
from worker.ledger.models import job_events
from worker.submit import JobRequest, enqueue_many
from worker.testing.processes import Processes, wait_for


def _stuck_jobs(n: int, queue: str) -> list[uuid.UUID]:
    """Jobs claimed by a worker that no longer exists, with leases already expired."""
    done = enqueue_many(
        [JobRequest("examples.echo", {"message": str(i)}, queue=queue) for i in range(n)], tenant="chaos"
    )
    with db.begin() as conn:
        for d in done:
            claimed = transitions.claim(
                conn, d.job.id, d.job.delivery_id, worker="gone@nowhere", pid=999_999, now=utcnow(), lease_s=-1
            )
            assert claimed is not None
    return [d.job.id for d in done]


def _recoveries(ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(job_events.c.job_id, sa.func.count())
            .where(job_events.c.job_id.in_(ids), job_events.c.reason == "worker_lost")
            .group_by(job_events.c.job_id)
        ).all()
    return {job_id: count for job_id, count in rows}


def test_two_beats_and_two_control_workers_recover_each_job_once(cprocs: Processes) -> None:
    """Given two beats and two control workers, When 30 jobs are stuck, Then each is recovered
    exactly once, and stays so while the loops keep running."""
    cprocs.control("control-1")
    cprocs.control("control-2")
    cprocs.beat("beat-1")
    cprocs.beat("beat-2")
    ids = _stuck_jobs(30, "chaos9-nobody")
    wait_for(lambda: len(_recoveries(ids)) == 30, 60, 0.1, "every stuck job recovered")
    runs_then = loop_stats("recover_stuck").get("runs", 0)
    wait_for(lambda: loop_stats("recover_stuck").get("runs", 0) >= runs_then + 5, 60, 0.1, "5 more recovery runs")
    counts = _recoveries(ids)
    assert set(counts.values()) == {1}, counts


def test_a_killed_control_worker_comes_back_and_recovers_what_got_stuck(cprocs: Processes) -> None:
    """Given the control worker SIGKILLed, When jobs get stuck meanwhile and a new control worker
    starts, Then the loops resume and every stuck job is recovered once."""
    control = cprocs.control("control-doomed")
    cprocs.beat()
    wait_for(lambda: loop_stats("recover_stuck").get("runs", 0) > 0, 30, 0.1, "loops running")
    control.kill_group(signal.SIGKILL)
    ids = _stuck_jobs(10, "chaos10-nobody")
    cprocs.control("control-reborn")
    wait_for(lambda: len(_recoveries(ids)) == 10, 60, 0.1, "every stuck job recovered")
    assert set(_recoveries(ids).values()) == {1}
