"""`fire_schedules`: every due schedule's fires, made as jobs, exactly once per scheduled time.

For each schedule not paused whose `next_fire_at` has come (a bounded batch), in ONE transaction:

1. `next_fire_at` is moved on with a compare-and-set (worker/ledger/schedules.py `advance`): a
   second loop that read the same schedule changes nothing (on PostgreSQL it waits for the
   first's row lock, then finds the time moved);
2. the due times older than the catch-up window are skipped and counted;
3. each time in the window is inserted as a job with `ON CONFLICT (schedule_id, scheduled_for)
   DO NOTHING`, unless the overlap policy says otherwise: `skip` (the default) skips the time while
   the previous fire's job is unfinished, `cancel_previous` cancels that job first, `allow` fires;
4. counts, `last_fire_at` / `last_job_id` and one `schedule_events` row per fire and per skip.

Then the new jobs are published the way accepted jobs are (committed first, then one pipeline; a
refused publish is the reconcile loop's). The loop's Redis lock only saves work: correctness is
the compare-and-set and the unique constraint.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from worker.accept.commit import Accepted, publish_new
from worker.accept.fire_times import plan
from worker.accept.schedules import fire_job, timing_of
from worker.broker.publish import announce_cancel
from worker.errors import PermanentError, ScheduleConflictError
from worker.ledger import db, queries, transitions
from worker.ledger import schedules as ledger
from worker.ledger.records import Job
from worker.ledger.schedules import Schedule
from worker.ledger.states import TERMINAL_STATES, JobState
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

ACTOR = "control:fire_schedules"


@dataclass
class _Run:
    """What one run did, over every schedule it handled."""

    made: list[Job] = field(default_factory=list)
    skipped: int = 0
    raced: int = 0
    asked_to_stop: list[uuid.UUID] = field(default_factory=list)


def fire_schedules(now: dt.datetime) -> dict[str, int]:
    """One run: fire what is due at `now`. Returns fired, skipped and raced (another run had it)."""
    s = get_settings()
    with db.connect() as conn:
        due = ledger.due(conn, now, limit=s.schedule_fire_batch)
    run = _Run()
    try:
        for schedule in due:
            with db.begin() as conn:
                _fire_one(conn, schedule, now, s, run)
    finally:  # what was committed is published even when a later schedule's transaction fails
        publish_new([Accepted(job, True) for job in run.made])
        announce_cancel(run.asked_to_stop)
    return {"fired": len(run.made), "skipped": run.skipped, "raced": run.raced}


def window_start(schedule: Schedule, now: dt.datetime, s: Settings) -> dt.datetime:
    """Due times before this are skipped: the schedule's catch-up window (the settings' when it
    has none), never under 2 periods of this loop, so the loop's own lateness skips nothing."""
    window = s.schedule_catch_up_seconds if schedule.catch_up_seconds is None else schedule.catch_up_seconds
    return now - dt.timedelta(seconds=max(window, 2 * s.schedule_period_seconds))


def _fire_one(conn: Connection, schedule: Schedule, now: dt.datetime, s: Settings, run: _Run) -> None:
    assert schedule.next_fire_at is not None
    todo = plan(timing_of(schedule), schedule.next_fire_at, now, window_start(schedule, now, s), s.schedule_fire_batch)
    if not ledger.advance(conn, schedule, todo.next_fire_at):
        run.raced += 1
        return
    previous, made, overlapped, invalid = schedule.last_job_id, [], 0, 0
    for at in todo.fire:
        if previous is not None and schedule.overlap != "allow" and _unfinished(conn, previous):
            if schedule.overlap == "skip":
                overlapped += 1
                continue
            _cancel_previous(conn, previous, schedule.tenant, now, run)
        try:
            new = fire_job(schedule, now)
        except PermanentError as exc:  # the job type or its signature changed under the schedule
            invalid += 1
            ledger.audit(conn, schedule, actor=ACTOR, action="fire_failed", at=now, detail=_at(at, error=str(exc)))
            continue
        job = transitions.create_fire(conn, new, schedule.id, at, actor=f"schedule:{schedule.id}", now=now)
        if job is not None:
            made.append(job)
            previous = job.id
            ledger.audit(conn, schedule, actor=ACTOR, action="fired", at=now, detail=_at(at, job_id=str(job.id)))
    _record(conn, schedule, made, todo.skipped, overlapped, invalid, now)
    run.made.extend(made)
    run.skipped += todo.skipped + overlapped + invalid


def _record(
    conn: Connection, schedule: Schedule, made: list[Job], late: int, overlapped: int, invalid: int, now: dt.datetime
) -> None:
    """Counts and the last fire on the row (already locked by `advance`); one audit row per kind of skip."""
    values: dict[str, object] = {}
    if made:
        values = {"last_fire_at": made[-1].scheduled_for, "last_job_id": made[-1].id}
    ledger.count(conn, schedule.id, fired=len(made), skipped=late + overlapped + invalid, values=values)
    if late:
        ledger.audit(conn, schedule, actor=ACTOR, action="skipped", at=now, detail={"reason": "catch_up", "n": late})
    if overlapped:
        detail = {"reason": "overlap", "n": overlapped, "job_id": str(schedule.last_job_id)}
        ledger.audit(conn, schedule, actor=ACTOR, action="skipped", at=now, detail=detail)


def _unfinished(conn: Connection, job_id: uuid.UUID) -> bool:
    job = queries.get_job(conn, job_id)
    return job is not None and JobState(job.state) not in TERMINAL_STATES


def _cancel_previous(conn: Connection, job_id: uuid.UUID, tenant: str, now: dt.datetime, run: _Run) -> None:
    """`cancel_previous`: the previous fire's job is cancelled the way `POST /jobs/{id}/cancel`
    cancels (a queued one at once; a running one is asked to stop, durably in the ledger, and its
    worker is woken once this transaction commits).
    The one place the fire loop cancels: a change to how jobs are cancelled is made here too."""
    done = transitions.cancel(conn, job_id, tenant, actor=ACTOR, now=now)
    if done is not None and done[0] == JobState.RUNNING:
        run.asked_to_stop.append(done[1].delivery_id)


def _at(at: dt.datetime, **detail: str) -> dict[str, str]:
    return {"scheduled_for": at.isoformat(), **detail}


def trigger(schedule: Schedule, *, actor: str, now: dt.datetime) -> Job:
    """A fire at `now`, outside the timing (it neither moves `next_fire_at` nor looks at overlap):
    its own `scheduled_for`, so it is one job however often the request is retried at that instant.

    Raises:
        UnknownJobTypeError, InvalidArgsError, UnknownQueueError: the job no longer fits.
        ScheduleConflictError: a fire for this very instant exists.
    """
    new = fire_job(schedule, now)
    with db.begin() as conn:
        job = transitions.create_fire(conn, new, schedule.id, now, actor=actor, now=now)
        if job is None:
            raise ScheduleConflictError("a fire for this instant exists; try again")
        ledger.count(conn, schedule.id, fired=1, skipped=0, values={"last_fire_at": now, "last_job_id": job.id})
        ledger.audit(conn, schedule, actor=actor, action="triggered", at=now, detail=_at(now, job_id=str(job.id)))
    publish_new([Accepted(job, True)])
    return job
