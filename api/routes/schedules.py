"""Schedule routes. Every query is scoped to the caller's tenant: another tenant's schedule is a 404.
Reading takes the `read` scope, every change `submit` (as for jobs); each change is audited."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.deps import ReadKey, SubmitKey
from api.schedule_schemas import (
    ScheduleCreate,
    ScheduleEventPublic,
    ScheduleEventsPublic,
    SchedulePatch,
    SchedulePublic,
    SchedulesPublic,
)
from api.schemas import JobPublic
from worker.accept.fire_times import Timing
from worker.accept.schedules import ScheduleSpec, check, new_values, timing_of
from worker.clock import utcnow
from worker.control.fire import trigger
from worker.errors import ScheduleConflictError, ScheduleNotFoundError
from worker.ledger import db
from worker.ledger import schedules as ledger
from worker.ledger.apikeys import ApiKey
from worker.ledger.schedules import Schedule

router = APIRouter(prefix="/schedules", tags=["schedules"])


def _actor(key: ApiKey) -> str:
    return f"api:{key.id}"


def _owned(conn: Any, schedule_id: uuid.UUID, tenant: str, *, lock: bool = False) -> Schedule:
    found = ledger.get(conn, schedule_id, tenant, lock=lock)
    if found is None:
        raise ScheduleNotFoundError(f"no schedule {schedule_id}")
    return found


@router.post("", status_code=201, response_model=SchedulePublic)
def create_schedule(body: ScheduleCreate, key: SubmitKey, response: Response) -> SchedulePublic:
    """Declare a schedule: every fire is a job of `type` with `args`; 409 if the name is taken."""
    spec = ScheduleSpec(
        name=body.name,
        type=body.type,
        timing=Timing(body.every_seconds, body.cron, body.timezone),
        args=body.args,
        queue=body.queue,
        overlap=body.overlap,
        catch_up_seconds=body.catch_up_seconds,
        paused=body.paused,
    )
    now = utcnow()
    values = new_values(spec, tenant=key.tenant, origin="api", now=now, allowed_queues=key.queues)
    with db.begin() as conn:
        made = ledger.create(conn, values, actor=_actor(key), now=now)
    if made is None:
        raise ScheduleConflictError(f"this tenant has a schedule named {body.name!r}", name=body.name)
    response.headers["Location"] = f"/schedules/{made.id}"
    return SchedulePublic.of(made)


@router.get("", response_model=SchedulesPublic)
def list_schedules(key: ReadKey, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> SchedulesPublic:
    """The caller's schedules by name, each with its next fire times and its last fire."""
    with db.connect() as conn:
        rows = ledger.list_for(conn, key.tenant, limit=limit)
    return SchedulesPublic(schedules=[SchedulePublic.of(r) for r in rows])


@router.get("/{schedule_id:uuid}", response_model=SchedulePublic)
def get_schedule(schedule_id: uuid.UUID, key: ReadKey) -> SchedulePublic:
    with db.connect() as conn:
        return SchedulePublic.of(_owned(conn, schedule_id, key.tenant))


@router.get("/{schedule_id:uuid}/events", response_model=ScheduleEventsPublic)
def get_schedule_events(
    schedule_id: uuid.UUID, key: ReadKey, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> ScheduleEventsPublic:
    """The schedule's audit, newest first: every change and every fire or skip."""
    with db.connect() as conn:
        _owned(conn, schedule_id, key.tenant)
        rows = ledger.events(conn, schedule_id, limit=limit)
    events = [ScheduleEventPublic(at=r.at, actor=r.actor, action=r.action, detail=r.detail) for r in rows]
    return ScheduleEventsPublic(schedule_id=schedule_id, events=events)


def _patched(current: Schedule, body: SchedulePatch) -> tuple[ScheduleSpec, bool]:
    """The schedule as the patch leaves it, and whether its timing changed."""
    given = body.model_fields_set
    timing = timing_of(current)
    if "every_seconds" in given and body.every_seconds is not None:
        timing = Timing(body.every_seconds, None, timing.timezone)
    if "cron" in given and body.cron is not None:
        timing = Timing(None, body.cron, timing.timezone)
    if "timezone" in given and body.timezone is not None:
        timing = dataclasses.replace(timing, timezone=body.timezone)
    spec = ScheduleSpec(
        name=current.name,
        type=current.type,
        timing=timing,
        args=body.args if body.args is not None else current.args,
        queue=current.queue,
        overlap=body.overlap or current.overlap,
        catch_up_seconds=body.catch_up_seconds if "catch_up_seconds" in given else current.catch_up_seconds,
        paused=body.paused if body.paused is not None else current.paused,
    )
    return spec, timing != timing_of(current)


@router.patch("/{schedule_id:uuid}", response_model=SchedulePublic)
def patch_schedule(schedule_id: uuid.UUID, body: SchedulePatch, key: SubmitKey) -> SchedulePublic:
    """Pause, resume, or change the timing, args, overlap or catch-up. A new timing or a resume
    counts the next fire from now: the fires a pause passed over are not made."""
    now = utcnow()
    with db.begin() as conn:
        current = _owned(conn, schedule_id, key.tenant, lock=True)
        spec, retimed = _patched(current, body)
        values = check(spec, tenant=key.tenant, allowed_queues=key.queues)
        resumed = current.paused and not spec.paused
        if retimed or resumed:
            values["next_fire_at"] = spec.timing.next_after(now)
        action = "resumed" if resumed else "paused" if spec.paused and not current.paused else "changed"
        detail = {k: v for k, v in values.items() if k != "next_fire_at" and getattr(current, k) != v}
        changed = ledger.update(conn, current, values, actor=_actor(key), action=action, now=now, detail=detail)
    if changed is None:
        raise ScheduleConflictError("the schedule changed while this change was made; read it and try again")
    return SchedulePublic.of(changed)


@router.delete("/{schedule_id:uuid}", status_code=204)
def delete_schedule(schedule_id: uuid.UUID, key: SubmitKey) -> Response:
    """Delete the schedule; the jobs it fired and its audit stay."""
    with db.begin() as conn:
        current = _owned(conn, schedule_id, key.tenant, lock=True)
        ledger.delete(conn, current, actor=_actor(key), now=utcnow())
    return Response(status_code=204)


@router.post("/{schedule_id:uuid}/trigger", status_code=202, response_model=JobPublic)
def trigger_schedule(schedule_id: uuid.UUID, key: SubmitKey, response: Response) -> JobPublic:
    """Fire now, outside the timing (paused or not): a job with `scheduled_for` now."""
    with db.connect() as conn:
        current = _owned(conn, schedule_id, key.tenant)
    job = trigger(current, actor=_actor(key), now=utcnow())
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobPublic.of(job)
