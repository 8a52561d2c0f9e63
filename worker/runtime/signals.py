"""Every Celery signal handler of a medic worker (and beat) process, connected in one place.

`install()` is called by medic's Celery loader when a worker or beat starts (`WorkerLoader`, and
`ControlLoader` in worker/control/wiring.py, which adds the control plane's handlers; named by path
in worker/broker/celery_app.py, as the control tasks are): after the job and
control modules are imported and before logging is set up or `worker_init` is sent, for
`medic worker`, `medic control`, a plain `celery -A worker.broker.celery_app worker` and the
embedded test worker alike. Importing a module connects nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import signals
from celery.loaders.app import AppLoader
from celery.utils.dispatch.signal import Signal

from worker.runtime import (
    cancel_wakeup,
    consumer,
    fencing,
    joblog,
    liveness,
    progress,
    scrape,
    shutdown,
    timer_compaction,
)

# (signal, handler): weak=False, since the handlers are module functions that live as long as
# the process; dispatch_uid makes a second install() a no-op.
HANDLERS = (
    (signals.after_setup_logger, joblog.on_setup_logger),
    (signals.after_setup_task_logger, joblog.on_setup_logger),
    (signals.task_prerun, joblog.on_task_prerun),
    (signals.task_postrun, joblog.on_task_postrun),
    (signals.worker_init, scrape.on_worker_init),
    (signals.worker_init, liveness.on_worker_init),
    (signals.worker_init, fencing.on_worker_init),
    (signals.worker_process_init, fencing.on_worker_process_init),
    (signals.worker_process_init, cancel_wakeup.on_worker_process_init),
    (signals.beat_init, liveness.on_beat_init),
    (signals.worker_process_shutdown, scrape.on_child_exit),
    (signals.worker_ready, timer_compaction.on_worker_ready),
    (signals.worker_ready, progress.on_worker_ready),
    # last: a registered consumer is what `medic up` waits for before its banner
    (signals.worker_ready, consumer.on_worker_ready),
    (signals.task_received, progress.on_task_received),
    (signals.worker_shutdown, consumer.on_worker_shutdown),
    (signals.worker_shutdown, fencing.on_worker_shutdown),
    (signals.worker_shutdown, progress.on_worker_shutdown),
    (signals.worker_shutting_down, shutdown.on_worker_shutting_down),
)


def _uid(handler: object) -> str:
    return f"medic:{getattr(handler, '__module__', '')}.{getattr(handler, '__qualname__', '')}"


Handlers = tuple[tuple[Signal, Callable[..., Any]], ...]


def connect(handlers: Handlers) -> None:
    """Connect `handlers` (once each, however often it is called)."""
    for signal, handler in handlers:
        signal.connect(handler, weak=False, dispatch_uid=_uid(handler))


def install() -> None:
    """Connect every handler of HANDLERS."""
    connect(HANDLERS)


def installed(handlers: Handlers = HANDLERS) -> list[str]:
    """Those of `handlers` connected in this process (for `medic`'s tests and a curious operator)."""
    return [_uid(h) for signal, h in handlers if any(key[0] == _uid(h) for key, _ in signal.receivers)]


class WorkerLoader(AppLoader):  # type: ignore[misc]
    """Celery's app loader plus medic's handlers: `init_worker` (a worker's or beat's start)
    imports the `imports` modules, then calls `on_worker_init`."""

    def on_worker_init(self) -> None:
        install()
