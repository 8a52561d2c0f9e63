"""The cancel broadcast, a fast path only: it makes the heartbeat of the process running a job beat
now, and that beat reads the job's cancel request from the ledger like any other.

So the broadcast carries no authority: lost, late or sent twice, it changes nothing but when the
request is learned (at the next heartbeat without it). It kills nothing either, so the job keeps
its grace (`MEDIC_CANCEL_GRACE_SECONDS`) to notice `current_job().cancelled()` and clean up.

The worker's main process gets the broadcast (`medic_cancel`, a Celery remote control command)
and sends SIGUSR2 to the prefork child running the delivery; the child's handler only wakes its
heartbeat thread (a signal handler must not touch the ledger: it interrupts the job's own thread,
which may hold a lock). A signal that arrives after the job ended costs one extra beat. In a
threads or solo pool the job runs in the main process: its heartbeat is woken there.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from celery.worker import state as worker_state
from celery.worker.control import control_command

from worker.broker.publish import CANCEL_COMMAND
from worker.runtime.heartbeat import wake_now

log = logging.getLogger(__name__)

WAKE_SIGNAL = signal.SIGUSR2  # unused by Celery's children unless CELERY_RDBSIG is set


def wake_heartbeat(*_: Any) -> None:
    """Beat now, if this process runs jobs (a signal handler: it only sets an event)."""
    wake_now()


@control_command(name=CANCEL_COMMAND, args=[("deliveries", list)], signature="<delivery id> ...")
def medic_cancel(state: Any, deliveries: list[str], **_: Any) -> dict[str, Any]:
    """Wake the heartbeat of the processes running these deliveries (their cancel was requested)."""
    wanted = set(deliveries)
    woken = 0
    for request in list(worker_state.active_requests):
        if request.id not in wanted:
            continue
        pid = request.worker_pid
        if pid and pid != os.getpid():
            try:
                os.kill(pid, WAKE_SIGNAL)
            except OSError as exc:  # the child is gone: its loss is reported anyway
                log.info("cancel wake-up of child %s failed: %s", pid, exc)
                continue
        else:
            wake_heartbeat()
        woken += 1
    return {"ok": f"{woken} woken"}


def on_worker_process_init(**_: Any) -> None:
    """A prefork child: SIGUSR2 from the main process wakes its heartbeat."""
    signal.signal(WAKE_SIGNAL, wake_heartbeat)
