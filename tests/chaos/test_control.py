"""The control plane doubled or killed: each stuck job is recovered exactly once, and loops resume."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import sqlalchemy as sa

from tests.ledger_view import assert_no_overlap
from tests.testjobs import executions
from worker.accept import JobRequest, enqueue_many
from worker.clock import utcnow
from worker.control.loop import loop_stats
from worker.control.recover import ACTOR as RECOVER
from worker.ledger import db, transitions
from worker.ledger.models import job_events
from worker.ops import processes
from worker.testing.processes import Proc, Processes, wait_for


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


def _beat(cprocs: Processes, name: str, schedule: Path) -> Proc:
    """A beat with its own schedule file: beat_cmd's default path is per PID of the starting
    process, so two beats started by one test would share (and fight over) one file."""
    argv = processes.beat_cmd("INFO")
    argv[argv.index("--schedule") + 1] = str(schedule)
    return cprocs.start(name, argv)


def _recover_ticks(beat: Proc) -> int:
    return beat.log().count("Sending due task recover-stuck")


def test_two_beats_and_two_control_workers_recover_each_job_once(cprocs: Processes, tmp_path: Path) -> None:
    """Given two live beats (each its own schedule) and two control workers, When a worker
    running 4 jobs is SIGKILLed, Then both beats keep sending recover_stuck and each job is
    recovered exactly once (one worker_lost event, by the loop), also after 5 more runs."""
    doomed = cprocs.worker("chaos9-doomed", queues="chaos9", concurrency=4)
    tags = [uuid.uuid4().hex for _ in range(4)]
    done = enqueue_many(
        [
            JobRequest("tests.record", {"tag": t, "seconds": 60}, queue="chaos9", timeout=120, max_attempts=1)
            for t in tags
        ],
        tenant="chaos",
    )
    ids = [d.job.id for d in done]
    wait_for(lambda: all(executions(t) for t in tags), 30, 0.05, "all 4 jobs running")
    cprocs.control("control-1")
    cprocs.control("control-2")
    beats = [_beat(cprocs, "beat-1", tmp_path / "beat-1"), _beat(cprocs, "beat-2", tmp_path / "beat-2")]
    doomed.kill_group(signal.SIGKILL)

    wait_for(lambda: len(_recoveries(ids)) == 4, 60, 0.1, "every stuck job recovered")
    runs_then = loop_stats("recover_stuck").get("runs", 0)
    ticks_then = [_recover_ticks(b) for b in beats]
    wait_for(lambda: loop_stats("recover_stuck").get("runs", 0) >= runs_then + 5, 60, 0.1, "5 more recovery runs")
    wait_for(
        lambda: all(_recover_ticks(b) > t for b, t in zip(beats, ticks_then, strict=True)),
        30, 0.1, "both beats still sending recover_stuck",
    )  # fmt: skip
    assert all(b.alive() for b in beats), [b.log()[-2000:] for b in beats]
    assert _recoveries(ids) == dict.fromkeys(ids, 1)
    with db.connect() as conn:
        actors = conn.execute(
            sa.select(job_events.c.actor).where(job_events.c.job_id.in_(ids), job_events.c.reason == "worker_lost")
        ).scalars()
        assert set(actors) == {RECOVER}
    assert all(len(executions(t)) == 1 and executions(t)[0]["end"] == 0 for t in tags)
    assert_no_overlap(ids)


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
    assert_no_overlap(ids)
