"""The worker main process's event-loop timer stays bounded: the time-limit entry the prefork pool
puts on kombu's heap for every job, and cancels when the job ends, is taken off again
(worker/runtime/timer_compaction.py), instead of staying there for the job's whole timeout."""

from __future__ import annotations

import heapq
from types import SimpleNamespace
from typing import Any

from celery.worker.consumer import Consumer
from kombu.asynchronous import Hub

from worker.broker.celery_app import app
from worker.runtime import timer_compaction


class _Pool:
    """What asynpool's on_timeout_set schedules for a job: its soft limit, on the hub's timer."""

    def _on_soft_timeout(self, job: int, soft: float, hard: float, hub: Hub) -> None:
        raise AssertionError("a job's soft limit fired in a test that waits for none")


def _start_and_finish(hub: Hub, jobs: range, running: int = 0) -> None:
    """Each job: a time-limit entry 300 s ahead, cancelled when it ends (all but the last `running`)."""
    pool = _Pool()
    for job in jobs:
        tref = hub.call_later(300.0, pool._on_soft_timeout, job, 300.0, 305.0, hub)
        if job < jobs.stop - running:
            tref.cancel()


def _compactors(hub: Hub) -> list[Any]:
    drop = timer_compaction.drop_cancelled
    return [s.entry for s in hub.timer._queue if getattr(s.entry.fun, "__wrapped__", None) is drop]


def test_cancelled_time_limits_leave_the_heap_and_the_running_ones_stay() -> None:
    hub = Hub()
    _start_and_finish(hub, range(1000), running=3)
    heap = hub.timer._queue
    assert len(hub.timer) == 1000  # kombu keeps cancelled entries: the growth this guards against
    assert timer_compaction.drop_cancelled(hub.timer) == 997
    assert hub.timer._queue is heap  # in place: the hub's loop holds this list
    kept = [s.entry.args[0] for s in hub.timer.queue]  # `.queue` pops in heap order: still a heap
    assert kept == [997, 998, 999]
    assert timer_compaction.drop_cancelled(hub.timer) == 0


def test_the_worker_ready_consumer_gets_one_compactor_that_empties_the_heap() -> None:
    hub = Hub()
    controller = SimpleNamespace(use_eventloop=True)
    consumer = Consumer(
        lambda *a: None, app=app, hub=hub, timer=hub.timer, controller=controller
    )  # worker_ready's sender
    timer_compaction.on_worker_ready(sender=consumer)
    timer_compaction.on_worker_ready(sender=consumer)  # a broker reconnect makes the consumer ready again
    [compactor] = _compactors(hub)
    _start_and_finish(hub, range(500))
    assert len(hub.timer) == 501
    due = heapq.heappop(hub.timer._queue)  # the loop pops it when due (10 s, before any job's 300 s)
    assert due.entry is compactor
    compactor()
    assert [s.entry for s in hub.timer._queue] == [compactor]  # rescheduled, and alone


def test_worker_ready_without_an_event_loop_is_a_no_op() -> None:
    timer_compaction.on_worker_ready(sender=object())
