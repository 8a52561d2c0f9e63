"""A process's dispatches that follow its jobs' ends, off the jobs' path.

When a job the dispatcher started ends in a worker, its key's slot (and its tenant's share of a
dispatched queue) is free, and the next held job may start. That dispatch is a transaction of
its own; run in the worker's child right after the finalize, it would delay the child's next
job by as much. So the child only notes what to wake (`defer`), and one thread per process
dispatches every queue noted since its last pass in one transaction per queue: under load, the
ends of many jobs share one dispatch. A process that dies with wakes still noted loses nothing:
the jobs stay `held`, and the dispatch_held loop starts them within its period.
"""

from __future__ import annotations

import logging
import threading

from worker.background import BackgroundThread
from worker.broker.publish import dispatch_queues
from worker.forksafe import PerProcess
from worker.ledger.dispatch import Wake

log = logging.getLogger(__name__)

IDLE_S = 1.0  # the thread's period when nothing wakes it (it is woken at each note)


class Wakeups:
    """The noted wakes of one process and the thread that dispatches them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Wake] = {}
        self._thread = BackgroundThread("medic-dispatch-wakeups", self.drain, every_s=IDLE_S, logger=log).start()

    def add(self, todo: dict[str, Wake]) -> None:
        with self._lock:
            for queue, wake in todo.items():
                noted = self._pending.setdefault(queue, Wake())
                noted.keys |= wake.keys
                noted.rate_keys |= wake.rate_keys
                noted.scan = noted.scan or wake.scan
        self._thread.wake()

    def drain(self) -> None:
        """Dispatch what was noted (a queue the ledger cannot dispatch now is the loop's)."""
        with self._lock:
            todo, self._pending = self._pending, {}
        if todo:
            dispatch_queues(todo)


_wakeups: PerProcess[None, Wakeups] = PerProcess(lambda _: Wakeups())


def defer(todo: dict[str, Wake]) -> None:
    """Dispatch these queues soon, from this process's wakeup thread."""
    if todo:
        _wakeups.get(None).add(todo)
