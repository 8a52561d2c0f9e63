"""The beat schedule, at the top level so it is found at a glance: every control loop is declared
in `worker.control.registry` (its function, its period setting), and `worker.control.schedule`
makes one entry per loop on the control queue; `medic beat` installs it.

    python -c "import beat_schedule, json; print(json.dumps(beat_schedule.current(), indent=1))"

`SCHEDULES` is where an application's own schedules go, in Celery's `beat_schedule` shape. They
are not beat entries: a control worker or beat writes them into the ledger at its start (origin
`code`, tenant MEDIC_SCHEDULE_CODE_TENANT), and the fire_schedules loop fires each time once
(docs/schedules.md). For example:

    SCHEDULES = {
        "nightly-report": {"task": "reports.nightly", "schedule": crontab(minute=30, hour=2),
                           "kwargs": {"format": "pdf"}, "timezone": "Europe/Berlin"},
        "poll-feed": {"task": "feeds.poll", "schedule": 60.0, "overlap": "skip"},
    }
"""

from __future__ import annotations

from typing import Any

from worker.control.schedule import beat_schedule
from worker.settings import get_settings

__all__ = ["SCHEDULES", "beat_schedule", "current"]

# The application's schedules (see above): none in medic itself.
SCHEDULES: dict[str, dict[str, Any]] = {}


def current() -> dict[str, dict[str, Any]]:
    """The schedule under this environment's settings."""
    return beat_schedule(get_settings())
