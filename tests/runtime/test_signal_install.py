"""A worker process installs its Celery signal handlers when it starts, in one `install()`, and
importing a module connects none. Each check runs in a fresh interpreter: this test process has
long since started embedded workers, so its own handlers prove nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests import ROOT
from worker.runtime import signals

IMPORT_EVERYTHING = """
import importlib, pkgutil
import worker, worker.runtime, worker.control
for package in (worker.runtime, worker.control):
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
importlib.import_module("worker.control.tasks")

import weakref
from celery import signals as celery_signals
from celery.utils.dispatch.signal import Signal

connected = []
for name in dir(celery_signals):
    signal = getattr(celery_signals, name)
    if isinstance(signal, Signal):
        for _, receiver in signal.receivers:
            fn = receiver() if isinstance(receiver, weakref.ReferenceType) else receiver
            module = getattr(fn, "__module__", None) or ""
            if module.startswith(("worker.", "api.")):
                connected.append(f"{name}: {module}.{fn.__qualname__}")
"""

START_WORKER = """
import io, json, logging, uuid
from types import SimpleNamespace
from celery import signals as celery_signals
from worker import logs
from worker.broker.celery_app import app
from worker.control.wiring import CONTROL_HANDLERS
from worker.runtime import signals

before = signals.installed() + signals.installed(CONTROL_HANDLERS)
app.loader.init_worker()  # what `celery worker`, `medic worker` and the embedded worker run first
after = signals.installed() + signals.installed(CONTROL_HANDLERS)
control = [signals._uid(handler) for _, handler in CONTROL_HANDLERS]

# a job's line, as a child logs it between task_prerun and task_postrun
out = io.StringIO()
handler = logging.StreamHandler(out)
logs.apply(handler, "json")
line_log = logging.getLogger("a.job")
line_log.addHandler(handler)
line_log.setLevel(logging.INFO)
request = SimpleNamespace(delivery_info={"routing_key": "q-install"}, hostname="w@host", medic_tenant="t1")
class Task:  # what task_prerun is sent with: hashable, as a real task is
    name = "examples.echo"

task = Task()
task.request = request
job_id, delivery_id = str(uuid.uuid4()), str(uuid.uuid4())
celery_signals.task_prerun.send(sender=task, task=task, args=[job_id, delivery_id])
line_log.info("running")
celery_signals.task_postrun.send(sender=task, task=task)
line_log.info("after")
lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
print(json.dumps({"before": before, "after": after, "control": control, "lines": lines, "job_id": job_id}))
"""


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _every_handler() -> list[str]:
    return [signals._uid(handler) for _, handler in signals.HANDLERS]


def test_importing_every_worker_module_connects_no_handler() -> None:
    """Bug caught: a handler connected by an import (the per-job log fields used to work only
    because the control tasks imported their module)."""
    out = _python(IMPORT_EVERYTHING + "import json\nprint(json.dumps(connected))")
    connected = json.loads(out.splitlines()[-1])
    assert connected == []


def test_the_import_scan_sees_a_handler_an_import_connects() -> None:
    """Bug caught: a scan that cannot see a connected handler, which would make the test above pass."""
    code = IMPORT_EVERYTHING.replace(
        "connected = []",
        "from worker.control import wiring\n"
        "celery_signals.worker_ready.connect(wiring._start_watchdog)\n"
        "connected = []",
    )
    connected = json.loads(_python(code + "import json\nprint(json.dumps(connected))").splitlines()[-1])
    assert connected == ["worker_ready: worker.control.wiring._start_watchdog"]


def test_a_starting_worker_installs_every_handler_and_a_job_line_carries_its_fields() -> None:
    """Bug caught: a worker whose start does not call install(): its job lines lack job_id, its
    metrics and consumer registration never start."""
    got = json.loads(_python(START_WORKER).splitlines()[-1])
    assert got["before"] == []
    assert sorted(name.rsplit(".", 1)[-1] for name in got["control"]) == [
        "_start_watchdog",
        "_sync_schedules_at_beat_start",
        "_sync_schedules_in_control_worker",
        "_warn_if_redis_evicts",
    ], "the eviction warning, the health watchdog and the schedules' sync (control worker, beat)"
    assert sorted(got["after"]) == sorted(_every_handler() + got["control"])
    running, after = got["lines"]
    assert running["job_id"] == got["job_id"] and running["queue"] == "q-install" and running["worker"] == "w@host"
    assert "job_id" not in after, "task_postrun clears the job's fields"
