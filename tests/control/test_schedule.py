"""The beat schedule names every control loop, and only tasks the control worker registers."""

from __future__ import annotations

import beat_schedule
from worker.broker.celery_app import CONTROL_QUEUE, app
from worker.control import tasks
from worker.settings import Settings


def test_every_control_task_is_scheduled_on_the_control_queue() -> None:
    schedule = beat_schedule.beat_schedule(Settings())
    control_tasks = {name for name in app.tasks if name.startswith("medic.control.")}
    assert control_tasks, tasks.__name__
    assert {entry["task"] for entry in schedule.values()} == control_tasks
    for entry in schedule.values():
        assert entry["options"]["queue"] == CONTROL_QUEUE
        assert 0 < entry["options"]["expires"] <= max(1.0, entry["schedule"])


def test_periods_come_from_the_settings() -> None:
    fast = beat_schedule.beat_schedule(Settings(profile="fast"))
    production = beat_schedule.beat_schedule(Settings(profile="production", recover_period_seconds=5.0))
    assert fast["recover-stuck"]["schedule"] == 1.0
    assert production["recover-stuck"]["schedule"] == 5.0


def test_importing_the_control_tasks_installs_the_schedule_on_the_app() -> None:
    """Beat imports the control tasks (the app's `imports`) and then reads this: a schedule
    that failed to install would give a beat with no loops."""
    assert "worker.control.tasks" in app.conf.imports
    assert set(app.conf.beat_schedule) == set(beat_schedule.current())
