"""The warm shutdown's deadline: a rolling restart neither loses a job nor waits for one.

SIGTERM starts Celery's warm shutdown: no new job is taken, running ones may finish. This module
gives that a deadline, MEDIC_SHUTDOWN_GRACE_SECONDS. Jobs still running when it passes are
handed back at once (queued, their retry published, reason `worker_shutdown`) so another worker
runs them now, not after their lease expires and recovery finds them. The attempt costs the job
nothing: a deploy is no failure of the job, so its `max_attempts` grows by one (its `attempts`
counts every claim, and so keeps growing, as fencing tokens need). Messages the worker had
prefetched but not started are not acknowledged, so the broker gets them back when the
connection closes.

Order, so that no execution outlives its hand-back: the delivery is marked as ours, its child is
SIGKILLed and seen dead, and only then is the job given back (fenced on that delivery). The mark
keeps the main thread's lost-child report (worker/runtime/lost_child.py), which sees the same
death, from recording it as a `worker_lost` failure: the job is handed back once, by us.

The deadline is a thread of the main process, which is blocked joining the pool meanwhile. It
forks nothing, and billiard forks no replacement child once the pool is closing, so the
fork-while-locked hazard lost_child.py describes does not arise here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.worker import state
from sqlalchemy.engine import Connection

from worker import logs
from worker.broker.publish import commit_then_publish
from worker.clock import utcnow
from worker.errors import LedgerUnavailableError
from worker.ledger import queries, transitions
from worker.ledger.db import with_ledger_retry
from worker.ledger.records import Job
from worker.ledger.states import JobState
from worker.runtime.lost_child import HANDED_BACK, MedicRequest, job_ids
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

REASON = "worker_shutdown"
HAND_BACK_BUDGET_S = 3.0  # the ledger write's retries: within the pod's last seconds before SIGKILL
DEATH_WAIT_S = 2.0  # longest wait for a SIGKILLed child to be gone (it is at once, unless unkillable)


def stop_within_s(s: Settings) -> float:
    """Longest a warm shutdown takes from SIGTERM to the last hand-back: the pod's termination
    grace (compose's stop_grace_period) must be at least this."""
    return s.shutdown_grace_seconds + DEATH_WAIT_S + HAND_BACK_BUDGET_S


@dataclass(frozen=True)
class Run:
    """One job running in a pool child when the grace ran out."""

    job_id: uuid.UUID
    delivery_id: uuid.UUID
    pid: int


def running_jobs() -> list[Run]:
    """The job deliveries this worker's children are running (accepted: they have a pid)."""
    for _ in range(10):  # the main thread may change the set while it is copied
        with contextlib.suppress(RuntimeError):
            requests = list(state.active_requests)
            break
    else:
        requests = []
    runs = []
    for request in requests:
        ids = job_ids(request.args) if isinstance(request, MedicRequest) else None
        # a pool without children (solo, threads) runs jobs in this very process: nothing to kill
        if ids is not None and request.worker_pid and request.worker_pid != os.getpid():
            runs.append(Run(ids[0], ids[1], int(request.worker_pid)))
    return runs


def gone(pid: int) -> bool:
    """The process no longer runs: reaped, or a zombie (which runs nothing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return fields[0] in ("Z", "X")


def kill(runs: list[Run]) -> None:
    """SIGKILL each run's child and wait until it runs no more."""
    for run in runs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGKILL)
    deadline = time.monotonic() + DEATH_WAIT_S
    while not all(gone(r.pid) for r in runs) and time.monotonic() < deadline:
        time.sleep(0.01)


def hand_back(runs: list[Run], *, actor: str, grace_s: float) -> list[Job | None]:
    """Give each run's job back (queued, one more attempt allowed, published), if the row is still
    running that delivery in that process; None for each run the ledger had already moved on."""
    s = get_settings()

    def write(conn: Connection) -> list[Job | None]:
        after: list[Job | None] = []
        for run in runs:
            job = queries.get_job(conn, run.job_id)
            if job is None or job.state != JobState.RUNNING or job.delivery_id != run.delivery_id:
                after.append(None)
                continue
            if job.worker_pid not in (None, run.pid):
                after.append(None)
                continue
            message = f"worker shut down; still running after the {grace_s:g}s grace, killed and handed back"
            given = transitions.give_back(
                conn, job, reason=REASON, actor=actor, now=utcnow(), max_backoff_s=s.max_backoff_seconds,
                immediate=True, attempt_spent=False,
                error={"type": "WorkerShutdown", "message": message, "traceback": None},
            )  # fmt: skip
            after.append(given)
        return after

    return with_ledger_retry(lambda: commit_then_publish(write), budget_s=HAND_BACK_BUDGET_S, what=REASON)


class Deadline:
    """Waits out the grace, then kills and hands back what still runs."""

    def __init__(self, hostname: str, grace_s: float) -> None:
        self.hostname, self.grace_s = hostname, grace_s
        self.thread = threading.Thread(target=self.run, name="medic-shutdown-deadline", daemon=True)

    def run(self) -> None:
        time.sleep(self.grace_s)  # the process exits (daemon thread) if the pool drains first
        try:
            self.expire()
        except Exception:  # a failing hook is logged, never fatal; the leases cover the jobs
            log.exception("shutdown: handing back the running jobs failed; recovery will find them by their lease")

    def expire(self) -> None:
        runs = running_jobs()
        if not runs:
            return
        HANDED_BACK.update(r.delivery_id for r in runs)
        kill(runs)
        try:
            after = hand_back(runs, actor=f"{self.hostname}:{os.getpid()}", grace_s=self.grace_s)
        except LedgerUnavailableError:
            log.warning("shutdown: ledger unavailable; %d killed jobs wait for their lease to expire", len(runs))
            return
        for run, row in zip(runs, after, strict=True):
            if row is not None:  # the killed delivery, the job's fields as the control loops log them
                extra = logs.job_extra(row, delivery_id=run.delivery_id, worker=self.hostname, reason=REASON)
                log.warning("shutdown: job %s still running after %gs grace: process %d killed, job %s",
                            run.job_id, self.grace_s, run.pid, row.state, extra=extra)  # fmt: skip


_started: list[Deadline] = []


def on_worker_shutting_down(sender: Any = None, how: str = "", **_: Any) -> None:
    """worker_shutting_down (main process, inside the signal handler): start the deadline once,
    on the first warm shutdown request. A cold one (SIGQUIT) is Celery's to carry out."""
    if how != "Warm" or _started:
        return
    grace = get_settings().shutdown_grace_seconds
    deadline = Deadline(str(sender or ""), grace)
    _started.append(deadline)
    deadline.thread.start()
