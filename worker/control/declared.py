"""Schedules declared in code, written into the ledger when a control worker or beat starts.

Two places, where Celery users look: `@job(..., schedule=...)` next to the job, and a `SCHEDULES`
dict in Celery's `beat_schedule` shape (`{"name": {"task": "type", "schedule": 30 | "cron" |
crontab(...) | timedelta, "kwargs": {...}}}`) in the modules of MEDIC_SCHEDULE_MODULES (the
top-level `beat_schedule.py` by default). They belong to MEDIC_SCHEDULE_CODE_TENANT, with
origin `code`.

`sync` is idempotent and keeps each schedule's state: a declaration that did not change writes
nothing; a changed definition is updated (the next fire counted from now only when the timing
changed). A code schedule no longer declared is paused, not deleted (its id, counts and fires
stay: during a rolling deploy an older process must not erase what a newer one declared), and
resumed when it is declared again. A name the tenant already uses over the API is left alone.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from worker.accept.fire_times import Timing
from worker.accept.schedules import ScheduleSpec, check, new_values, timing_of
from worker.errors import InvalidArgsError, MedicError
from worker.ledger import db
from worker.ledger import schedules as ledger
from worker.ledger.schedules import Schedule
from worker.runtime.registry import all_specs, load_job_modules
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

ACTOR = "code"
UNDECLARED = "undeclared"
SPEC_FIELDS = ("args", "queue", "overlap", "catch_up_seconds", "paused")


def timing(value: Any, timezone: str = "UTC") -> Timing:
    """A declaration's `schedule`: seconds, a timedelta, a cron string, or a celery `crontab`.

    Raises:
        InvalidArgsError: a value of none of those kinds (celery's `solar` has no equivalent).
    """
    if isinstance(value, bool):
        raise InvalidArgsError(f"not a schedule: {value!r}")
    if isinstance(value, int | float):
        return Timing(every_seconds=float(value), timezone=timezone)
    if isinstance(value, dt.timedelta):
        return Timing(every_seconds=value.total_seconds(), timezone=timezone)
    if isinstance(value, str):
        return Timing(cron=value, timezone=timezone)
    fields = ("_orig_minute", "_orig_hour", "_orig_day_of_month", "_orig_month_of_year", "_orig_day_of_week")
    if all(hasattr(value, f) for f in fields):  # celery.schedules.crontab, without importing it
        # the entry's `timezone`, not the crontab's (that is the Celery app's, UTC here)
        return Timing(cron=" ".join(str(getattr(value, f)) for f in fields), timezone=timezone)
    raise InvalidArgsError(f"not a schedule: {value!r} (seconds, a timedelta, a cron string or a crontab)")


def from_job(name: str, schedule: Any) -> ScheduleSpec:
    """`@job(name, schedule=...)`: the schedule itself, or a dict of its fields (`every_seconds` or
    `cron`, `timezone`, `args`, `queue`, `overlap`, `catch_up_seconds`, `paused`, `name`)."""
    if not isinstance(schedule, Mapping):
        return ScheduleSpec(name=name, type=name, timing=timing(schedule))
    d = dict(schedule)
    when = d.pop("every_seconds", None) or d.pop("cron", None)
    zone = d.pop("timezone", "UTC")
    extra = {k: d.pop(k) for k in SPEC_FIELDS if k in d}
    spec = ScheduleSpec(name=d.pop("name", name), type=name, timing=timing(when, zone), **extra)
    if d:
        raise InvalidArgsError(f"schedule of {name}: unknown fields {sorted(d)}")
    return spec


def from_beat_entry(name: str, entry: Mapping[str, Any]) -> ScheduleSpec:
    """One entry of a Celery `beat_schedule` dict. medic's jobs take keyword arguments: `args`
    (positional) must be empty; `options` may name a `queue` and nothing else."""
    d = dict(entry)
    if d.pop("args", None):
        raise InvalidArgsError(f"schedule {name}: medic jobs take keyword arguments: use kwargs, not args")
    options = dict(d.pop("options", None) or {})
    queue = options.pop("queue", None)
    if options or d.pop("relative", False):
        raise InvalidArgsError(f"schedule {name}: options other than queue, and relative, are not supported")
    when = timing(d.pop("schedule"), d.pop("timezone", "UTC"))
    extra = {k: d.pop(k) for k in ("overlap", "catch_up_seconds", "paused") if k in d}
    spec = ScheduleSpec(name=name, type=d.pop("task"), timing=when, args=d.pop("kwargs", {}), queue=queue, **extra)
    if d:
        raise InvalidArgsError(f"schedule {name}: unknown fields {sorted(d)}")
    return spec


def declared(s: Settings) -> list[ScheduleSpec]:
    """Every schedule the code declares. A schedule module that cannot be imported is skipped
    (logged); one that declares something wrong raises: that is the code's bug."""
    load_job_modules(s.job_modules)
    specs = [from_job(name, spec.schedule) for name, spec in sorted(all_specs().items()) if spec.schedule is not None]
    for module in s.schedule_modules:
        try:
            entries = getattr(importlib.import_module(module), "SCHEDULES", {})
        except ImportError as exc:
            log.info("schedule module %s not loaded: %s", module, exc)
            continue
        specs.extend(from_beat_entry(name, entry) for name, entry in entries.items())
    return specs


def sync(now: dt.datetime, specs: Iterable[ScheduleSpec] | None = None) -> dict[str, int]:
    """Write the declared schedules into the ledger; returns how many were created, changed,
    paused (no longer declared) and left alone (a name taken over the API)."""
    s = get_settings()
    wanted = {spec.name: spec for spec in (declared(s) if specs is None else specs)}
    counts = {"created": 0, "changed": 0, "unchanged": 0, "undeclared": 0, "clash": 0}
    with db.begin() as conn:
        for spec in wanted.values():
            counts[_upsert(conn, spec, s.schedule_code_tenant, now)] += 1
        for gone in ledger.list_for(conn, s.schedule_code_tenant, limit=10_000, origin="code"):
            if gone.name not in wanted and not gone.paused:
                ledger.update(conn, gone, {"paused": True}, actor=ACTOR, action=UNDECLARED, now=now)
                counts["undeclared"] += 1
    return counts


def _upsert(conn: Any, spec: ScheduleSpec, tenant: str, now: dt.datetime) -> str:
    current = ledger.by_name(conn, tenant, spec.name)
    if current is None:
        ledger.create(conn, new_values(spec, tenant=tenant, origin="code", now=now), actor=ACTOR, now=now)
        return "created"
    if current.origin != "code":
        log.warning("schedule %s of tenant %s exists over the API; the one in code is ignored", spec.name, tenant)
        return "clash"
    values = check(spec, tenant=tenant)
    if current.paused and _last_action(conn, current) == UNDECLARED:
        values["paused"] = spec.paused  # declared again: as the code says
    else:
        values["paused"] = current.paused or spec.paused  # a pause made over the API outlives a restart
    if spec.timing != timing_of(current) or (current.paused and not values["paused"]):
        values["next_fire_at"] = spec.timing.next_after(now)
    changed = {k: v for k, v in values.items() if getattr(current, k) != v}
    if not changed:
        return "unchanged"
    ledger.update(conn, current, values, actor=ACTOR, action="redeclared", now=now, detail=_jsonable(changed))
    return "changed"


def _last_action(conn: Any, schedule: Schedule) -> str | None:
    rows = ledger.events(conn, schedule.id, limit=1)
    return str(rows[0].action) if rows else None


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in values.items()}


def sync_logged() -> None:
    """At a control worker's or beat's start: a failure is logged, never fatal (the ledger may be
    down; the next start, or `medic schedules sync`, tries again)."""
    try:
        counts = sync(dt.datetime.now(dt.UTC))
    except MedicError as exc:
        log.error("code-declared schedules not written: %s", exc)
        return
    except Exception:  # a failing start hook is logged; the process carries on
        log.exception("code-declared schedules not written")
        return
    if any(counts.values()):
        log.info("code-declared schedules: %s", counts)
