"""Keeps the worker main process's event-loop timer from growing with every job it has run.

Every message carries a soft and a hard time limit, so the prefork pool puts a timer entry on the
main process's event loop (kombu's Hub) for each job it starts, and cancels it when the job ends.
kombu only marks a cancelled entry: it stays on the heap until its time would have come (the
job's timeout), so the heap holds rate x timeout dead entries, tens of MB at a few hundred jobs/s
(plain Celery does the same with the same limits; the measurement is in docs/benchmarks.md,
"Scale"). `drop_cancelled` takes them off every COMPACT_EVERY_S, so at most that many seconds of
jobs' entries are ever held.
"""

from __future__ import annotations

import heapq
import weakref
from typing import Any

from kombu.asynchronous.timer import Timer

COMPACT_EVERY_S = 10.0
_compacted: weakref.WeakSet[Timer] = weakref.WeakSet()


def drop_cancelled(timer: Timer) -> int:
    """Take the cancelled entries off a kombu timer's heap; returns how many went."""
    queue = timer._queue
    live = [s for s in queue if not s.entry.canceled]
    dropped = len(queue) - len(live)
    if dropped:
        heapq.heapify(live)
        queue[:] = live  # in place: the hub's loop and the timer's iterator hold this very list
    return dropped


def compact_timer(hub: Any) -> None:
    """Run `drop_cancelled` on the hub's timer every COMPACT_EVERY_S, from the hub's own loop
    (the only thread that touches the heap); once per timer, however often the consumer restarts."""
    timer = getattr(hub, "timer", None)
    if timer is None or timer in _compacted:
        return
    _compacted.add(timer)
    hub.call_repeatedly(COMPACT_EVERY_S, drop_cancelled, timer)


def on_worker_ready(sender: Any, **_: Any) -> None:
    """Main process, its event loop set up (sender: the consumer; no hub without one)."""
    compact_timer(getattr(sender, "hub", None))
