"""A schedule's definition checked before anything is written, and the job each fire makes.

The same checks as a job's (type, args, queue, the caller's queues: worker/accept/validate.py)
plus the timing (worker/accept/fire_times.py) and the overlap policy. The API, the code-declared
schedules (worker/control/declared.py) and the fire loop all go through here.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.accept.fire_times import Timing
from worker.accept.validate import JobRequest, new_job
from worker.errors import InvalidArgsError
from worker.ledger.records import NewJob
from worker.ledger.schedules import OVERLAP_POLICIES, Schedule
from worker.settings import get_settings

NAME_MAX = 200


@dataclass(frozen=True)
class ScheduleSpec:
    """What a caller declares; `catch_up_seconds` None: only the latest missed fire is made."""

    name: str
    type: str
    timing: Timing
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    overlap: str = "skip"
    catch_up_seconds: float | None = None
    paused: bool = False


def check(spec: ScheduleSpec, *, tenant: str, allowed_queues: frozenset[str] | None = None) -> dict[str, Any]:
    """The definition's columns, args as the job will get them.

    Raises:
        UnknownJobTypeError, InvalidArgsError, PayloadTooLargeError, UnknownQueueError, ForbiddenError
    """
    if not 0 < len(spec.name) <= NAME_MAX:
        raise InvalidArgsError(f"a schedule's name is 1 to {NAME_MAX} characters")
    if spec.overlap not in OVERLAP_POLICIES:
        raise InvalidArgsError(f"overlap is one of {', '.join(OVERLAP_POLICIES)}", overlap=spec.overlap)
    if spec.catch_up_seconds is not None and not spec.catch_up_seconds >= 0:
        raise InvalidArgsError("catch_up_seconds must be 0 or more")
    timing = spec.timing.check()
    job = new_job(
        JobRequest(spec.type, spec.args, spec.queue),
        tenant=tenant,
        s=get_settings(),
        now=dt.datetime.now(dt.UTC),
        allowed_queues=allowed_queues,
    )
    return {
        "name": spec.name,
        "type": job.type,
        "args": dict(job.args),
        "queue": spec.queue,
        "every_seconds": timing.every_seconds,
        "cron": timing.cron,
        "timezone": timing.timezone,
        "overlap": spec.overlap,
        "catch_up_seconds": spec.catch_up_seconds,
        "paused": spec.paused,
    }


def new_values(spec: ScheduleSpec, *, tenant: str, origin: str, now: dt.datetime, **check_kw: Any) -> dict[str, Any]:
    """A new schedule's row: its definition, and its first fire after `now`."""
    values = check(spec, tenant=tenant, **check_kw)
    return {
        **values,
        "id": uuid.uuid4(),
        "tenant": tenant,
        "origin": origin,
        "created_at": now,
        "updated_at": now,
        "next_fire_at": timing_of(values).next_after(now),
        "fired": 0,
        "skipped": 0,
    }


def timing_of(row: Mapping[str, Any] | Schedule) -> Timing:
    get = row.get if isinstance(row, Mapping) else lambda k: getattr(row, k)
    return Timing(get("every_seconds"), get("cron"), get("timezone") or "UTC")


def fire_job(schedule: Schedule, now: dt.datetime) -> NewJob:
    """The job of one fire, validated again: the job type's signature may have changed since the
    schedule was declared (then the fire fails with the error, and is counted as skipped)."""
    return new_job(
        JobRequest(schedule.type, schedule.args, schedule.queue), tenant=schedule.tenant, s=get_settings(), now=now
    )
