"""Schedule models: ScheduleCreate / SchedulePatch in, SchedulePublic / SchedulesPublic out."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.schemas import NO_NUL
from worker.accept.fire_times import MIN_EVERY_SECONDS
from worker.accept.schedules import timing_of
from worker.ledger.schedules import Schedule

Overlap = Literal["skip", "allow", "cancel_previous"]
NEXT_FIRES = 3

_EVERY = Field(None, ge=MIN_EVERY_SECONDS, le=10 * 365 * 86400, description="Fire every this many seconds.")
_CRON = Field(
    None, min_length=1, max_length=200, pattern=NO_NUL, description="A 5-field cron expression, in `timezone`."
)
_TZ = Field(None, min_length=1, max_length=64, pattern=NO_NUL, description="IANA zone of `cron`, e.g. Europe/Berlin.")
_CATCH_UP = Field(
    None,
    ge=0,
    le=366 * 86400,
    description="After an outage, due fires older than this are skipped and counted "
    "(none: MEDIC_SCHEDULE_CATCH_UP_SECONDS).",
)


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "nightly-report",
                    "type": "examples.echo",
                    "args": {"message": "report"},
                    "cron": "30 2 * * *",
                    "timezone": "Europe/Berlin",
                },
                {
                    "name": "heartbeat",
                    "type": "examples.echo",
                    "args": {"message": "tick"},
                    "every_seconds": 60,
                    "overlap": "allow",
                    "catch_up_seconds": 300,
                },
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL, description="Unique in the tenant.")
    type: str = Field(min_length=1, max_length=200, pattern=NO_NUL, description="A registered job type.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of every fire's job.")
    queue: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL)
    every_seconds: float | None = _EVERY
    cron: str | None = _CRON
    timezone: str = Field("UTC", min_length=1, max_length=64, pattern=NO_NUL, description="IANA zone of `cron`.")
    overlap: Overlap = Field(
        "skip", description="While the previous fire's job is unfinished: skip, allow, cancel_previous."
    )
    catch_up_seconds: float | None = _CATCH_UP
    paused: bool = False

    @model_validator(mode="after")
    def _one_timing(self) -> Self:
        if (self.every_seconds is None) == (self.cron is None):
            raise ValueError("give exactly one of every_seconds and cron")
        return self


class SchedulePatch(BaseModel):
    """Only the fields given change; a new timing (or a resume) recomputes the next fire from now."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"paused": True}, {"cron": "0 3 * * *"}, {"args": {"message": "x"}}]},
    )

    paused: bool | None = None
    every_seconds: float | None = _EVERY
    cron: str | None = _CRON
    timezone: str | None = _TZ
    args: dict[str, Any] | None = None
    overlap: Overlap | None = None
    catch_up_seconds: float | None = _CATCH_UP

    @model_validator(mode="after")
    def _at_most_one_timing(self) -> Self:
        if self.every_seconds is not None and self.cron is not None:
            raise ValueError("give at most one of every_seconds and cron")
        return self


class SchedulePublic(BaseModel):
    id: uuid.UUID
    name: str
    type: str
    args: dict[str, Any]
    queue: str | None
    every_seconds: float | None
    cron: str | None
    timezone: str
    overlap: str
    catch_up_seconds: float | None
    paused: bool
    origin: str = Field(description="api, or code (declared with @job(schedule=...) or in beat_schedule.py).")
    created_at: dt.datetime
    updated_at: dt.datetime
    next_fires: list[dt.datetime] = Field(description="The next fire times (none while paused).")
    last_fire_at: dt.datetime | None
    last_job_id: uuid.UUID | None
    fired: int
    skipped: int = Field(description="Fires skipped: older than the catch-up window, overlapping, or invalid.")

    @classmethod
    def of(cls, s: Schedule) -> SchedulePublic:
        nxt: list[dt.datetime] = []
        if not s.paused and s.next_fire_at is not None:
            nxt = [s.next_fire_at, *timing_of(s).upcoming(s.next_fire_at, NEXT_FIRES - 1)]
        fields = {k: getattr(s, k) for k in cls.model_fields if k != "next_fires"}
        return cls(**fields, next_fires=nxt)


class SchedulesPublic(BaseModel):
    schedules: list[SchedulePublic]


class ScheduleEventPublic(BaseModel):
    at: dt.datetime
    actor: str
    action: str
    detail: dict[str, Any] | None


class ScheduleEventsPublic(BaseModel):
    schedule_id: uuid.UUID
    events: list[ScheduleEventPublic]
