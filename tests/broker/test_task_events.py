"""Task events only where they are watched: off on workers by default, never for control loops."""

from __future__ import annotations

import worker.control.tasks  # noqa: F401 - registers the control tasks
from worker.broker.celery_app import CONTROL_TASK_PREFIX, app
from worker.ops import processes


def test_workers_start_without_task_events(medic_env: dict[str, str]) -> None:
    # Bug caught: a worker started with -E spends a third of its main process on events.
    assert "-E" not in processes.worker_cmd("default", 2, "w")
    assert "-E" not in processes.control_cmd()
    assert app.conf.worker_send_task_events is False


def test_control_tasks_never_send_events_job_tasks_do(medic_env: dict[str, str]) -> None:
    # Bug caught: Flower turns events on remotely and then lists every loop run (every 2 s).
    control = [t for name, t in app.tasks.items() if name.startswith(CONTROL_TASK_PREFIX)]
    assert len(control) >= 5, sorted(app.tasks)
    assert all(t.send_events is False for t in control), [t.name for t in control if t.send_events]
    job_tasks = [t for name, t in app.tasks.items() if name.startswith("tests.")]
    assert job_tasks and all(t.send_events is True for t in job_tasks)
