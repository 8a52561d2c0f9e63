"""The lost-child report: the main process sees a child die or hit its hard time limit before
anyone else.

`MedicRequest` turns those moments into ledger transitions at once (worker_lost / timeout),
instead of waiting for a lease to expire. Every write is fenced on the delivery, so a report that
comes late changes nothing; a report that fails (ledger down) is left to the recovery loops,
which find the job by its expired lease.

The report runs in the main thread, with one attempt and no retries. It must not run in a
thread: billiard forks the replacement child right after a child dies, and a fork taken while
another thread holds an import lock (the first `import psycopg2` of the process, say) leaves the
child deadlocked on its first job. Seen here in a test, with py-spy, before this was synchronous.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import WorkerLostError
from celery.worker.request import Request
from sqlalchemy.engine import Connection

from worker import logs
from worker.broker.messages import TENANT_HEADER, queue_of
from worker.broker.publish import commit_then_publish
from worker.clock import utcnow
from worker.errors import LedgerUnavailableError
from worker.ledger import queries, release, transitions
from worker.ledger.db import with_ledger_retry
from worker.ledger.records import Job
from worker.ledger.states import JobState
from worker.runtime.job_metrics import job_finished
from worker.runtime.outcome import OutcomeKind
from worker.settings import get_settings

log = logging.getLogger(__name__)

# Deliveries whose child the shutdown deadline (worker/runtime/shutdown.py) kills and hands back
# itself: their loss is no failure of the job, so `_report` leaves them alone. Filled before the
# kill, so the report of that death, in the main thread, always finds its delivery here.
HANDED_BACK: set[uuid.UUID] = set()


def job_ids(args: Any) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(job_id, delivery_id) of a job task's args, or None for any other task."""
    return _job_ids(args)


def _job_ids(args: Any) -> tuple[uuid.UUID, uuid.UUID] | None:
    try:
        return uuid.UUID(args[0]), uuid.UUID(args[1])
    except (TypeError, ValueError, IndexError):
        return None


def report_lost(
    job_id: uuid.UUID, delivery_id: uuid.UUID, pid: int | None, *, reason: OutcomeKind, actor: str, budget_s: float
) -> tuple[Job, Job] | None:
    """A delivery's process is gone: give the job back (retry or dead) and publish the retry.
    Returns the running row it took and the row after, or None when there was nothing to take."""
    s = get_settings()
    taken: list[Job] = []

    def write(conn: Connection) -> list[Job | None]:
        taken.clear()
        job = queries.get_job(conn, job_id)
        if job is None or job.state != JobState.RUNNING or job.delivery_id != delivery_id:
            return [None]
        if pid is not None and job.worker_pid not in (None, pid):
            return [None]
        taken.append(job)
        now = utcnow()
        if reason is OutcomeKind.TIMEOUT:
            detail = f"hard time limit of {job.timeout_s + s.timeout_grace_seconds:.0f}s exceeded"
            after = transitions.time_out(
                conn, job, actor=actor, now=now, max_backoff_s=s.max_backoff_seconds, detail=detail
            )
            return _follow(conn, after, actor=actor, now=now)
        after = transitions.give_back(
            conn,
            job,
            reason=reason.value,
            actor=actor,
            now=now,
            max_backoff_s=s.max_backoff_seconds,
            immediate=True,
            error={"type": "WorkerLost", "message": f"process {pid} died while running the job", "traceback": None},
        )
        return _follow(conn, after, actor=actor, now=now)

    after, *_ = with_ledger_retry(lambda: commit_then_publish(write), budget_s=budget_s, what=reason)
    return None if after is None or not taken else (taken[0], after)


def _follow(conn: Connection, after: Job | None, *, actor: str, now: dt.datetime) -> list[Job | None]:
    """A workflow's step that died here: its dependents cancelled (or counted down) in the same
    transaction, as a worker's finalize does (worker/ledger/release.py)."""
    if after is None:
        return [None]
    return [after, *release.step_ended(conn, after, actor=actor, now=now)]


def _report(request: Request, reason: OutcomeKind) -> None:
    ids = _job_ids(request.args)
    if ids is None or ids[1] in HANDED_BACK:
        return
    try:
        taken = report_lost(
            ids[0], ids[1], request.worker_pid, reason=reason, actor=f"{request.hostname}:{os.getpid()}", budget_s=0
        )
        if taken is not None:  # the child cannot count a run it died in: the main process does
            job_finished(taken[0], reason, taken[1])
            log.warning("job %s: its process %s ended under it (%s): %s", ids[0], request.worker_pid, reason,
                        taken[1].state, extra=_fields(request, reason, taken[0]))  # fmt: skip
    except LedgerUnavailableError:
        log.warning("could not record %s of job %s; the recovery loop will find it", reason, ids[0],
                    extra=_fields(request, reason))  # fmt: skip
    except Exception:  # a failing hook is logged, never fatal to the worker
        log.exception("recording %s of job %s failed", reason, ids[0], extra=_fields(request, reason))


def _fields(request: Request, reason: OutcomeKind, row: Job | None = None) -> dict[str, str]:
    """The job's fields for a line of the main process, which runs no job (so the child's
    task_prerun context is not set here): from the row, else from the message."""
    ids = _job_ids(request.args)
    return logs.job_extra(
        row,
        job_id=ids and ids[0],
        delivery_id=ids and ids[1],
        tenant=getattr(request, TENANT_HEADER, None) if row is None else row.tenant,
        queue=queue_of(request.delivery_info) if row is None else row.queue,
        worker=request.hostname,
        reason=reason.value,
    )


class MedicRequest(Request):  # type: ignore[misc]
    """The Request of every job task (worker/runtime/task.py): Celery calls these in the main
    process when a child hits its hard limit or dies."""

    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            _report(self, OutcomeKind.TIMEOUT)

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        lost = isinstance(exc, WorkerLostError) or (
            isinstance(exc, (SystemExit, KeyboardInterrupt)) and not (self._already_cancelled or self._already_revoked)
        )
        super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        if lost:
            _report(self, OutcomeKind.WORKER_LOST)
