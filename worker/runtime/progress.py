"""Progress liveness of a worker's consumer: a worker that is alive but takes no message.

After a broker reconnect, or on a half-open connection (a NAT, a load balancer, a failover that
keeps the socket open), Celery's consumer can wait for ever for a BRPOP reply that never comes
(celery issues 8082, 10205, 10302): the process, its heartbeat and its liveness file are fine,
the consumer registration too, and jobs pile up. So the worker's main process checks, every
heartbeat, that a queue with ready messages and a worker with free slots means messages arrive.

When nothing arrived for MEDIC_CONSUMER_STALL_SECONDS while messages waited and slots were free,
the watchdog logs an error, marks the stall in Redis (MedicConsumerStalled reads it) and in
`medic_consumer_stalls_total`, and restarts the consumer in place: it shuts down every socket of
the consumer's broker connection (shutdown, not close, so the event loop itself reads the end of
stream, raises a connection error and Celery reconnects as after any broker loss). A consumer
still stalled another MEDIC_CONSUMER_STALL_SECONDS later gets a warm shutdown with exit code
EXIT_STALLED, for its supervisor (Kubernetes, systemd, `medic worker`) to start it anew.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from celery import signals
from celery.worker import state
from prometheus_client import Counter

from worker.background import BackgroundThread
from worker.broker import inspect, redis_keys
from worker.broker.redis_client import get_redis
from worker.forksafe import PerProcess
from worker.runtime.worker_info import consumed_queues, is_test_worker
from worker.settings import get_settings

log = logging.getLogger(__name__)

EXIT_STALLED = 75  # EX_TEMPFAIL: a restart is the cure
FORGET_AFTER_S = 3600.0  # the stall marks key expires an hour after the last stall anywhere


class _Arrivals:
    """Messages this process's consumer handed to a task strategy (the `task_received` signal)."""

    count = 0


def on_task_received(**_: Any) -> None:
    _Arrivals.count += 1  # only the consumer's event loop thread writes it


@dataclass
class Stall:
    """A stall in progress: since when (monotonic), and what was done about it."""

    since: float
    restarted_at: float | None = None
    shutdown_asked: bool = False

    @property
    def action(self) -> str:
        return "shutdown" if self.shutdown_asked else "restart"


class Watchdog:
    """Checks one worker's consumer every heartbeat and heals it when it stalls."""

    def __init__(self, consumer: Any, hostname: str, queues: tuple[str, ...]) -> None:
        self.consumer, self.hostname = consumer, hostname
        self.arrivals = _Arrivals.count
        self.waiting_since: float | None = None
        self.last_look: float | None = None
        self.stall: Stall | None = None
        for queue in queues:  # each series from 0, so that a first stall is an increase
            stalls_counter().labels(hostname, queue)
        self.thread = BackgroundThread(
            "medic-progress", self.check, every_s=get_settings().heartbeat_seconds, logger=log
        )

    def start(self) -> Watchdog:
        self.thread.start()
        return self

    def queues(self) -> list[str]:
        """Asked at each look: `celery control cancel_consumer` deselects a queue at run time."""
        return consumed_queues(self.consumer.app)

    def judging(self) -> bool:
        """Not while Celery reconnects (its consumer has no connection then: a broker outage is its
        own business) or shuts down (a warm shutdown stops consuming on purpose)."""
        # Celery's test: the exit code may be 0 (a SIGTERM), so only None and False mean "no"
        shutting_down = any(
            flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate)
        )
        return self.consumer.connection is not None and not shutting_down

    def free_slots(self) -> int:
        size = getattr(self.consumer.pool, "num_processes", None)
        return int(self.consumer.controller.concurrency if size is None else size) - len(state.reserved_requests)

    def check(self, now: float | None = None) -> None:
        """One look: an arrival, an empty queue or no free slot resets the clock; ready messages
        and free slots with no arrival for MEDIC_CONSUMER_STALL_SECONDS are a stall."""
        now = time.monotonic() if now is None else now
        paused = self.last_look is not None and now - self.last_look > 2 * get_settings().heartbeat_seconds
        self.last_look = now
        if paused or not self.judging():
            # No judgement across a pause of this process (SIGSTOP, a frozen VM: its consumer had no
            # chance either), while Celery reconnects or while it shuts down. A stall under way
            # stays: its restart may be what Celery is doing.
            self.waiting_since = None
            return
        arrivals = _Arrivals.count
        waiting = [q for q in self.queues() if inspect.depth(q) > 0] if self.free_slots() > 0 else []
        if arrivals != self.arrivals or not waiting:
            self.arrivals, self.waiting_since = arrivals, None
            if self.stall is not None:
                log.warning("consumer of %s consumes again (it stalled %.0f s)", self.hostname, now - self.stall.since)
                self.stall = None
            return
        if self.waiting_since is None:
            self.waiting_since = now
        if now - self.waiting_since >= get_settings().consumer_stall_seconds:
            self.act(waiting, now)

    def act(self, waiting: list[str], now: float) -> None:
        """Restart the consumer at once; a warm shutdown if that did not help within the threshold."""
        since = now if self.waiting_since is None else self.waiting_since
        stall = self.stall = self.stall or Stall(since=since)
        if stall.restarted_at is None:
            stall.restarted_at = now
            self.report(waiting, now - stall.since, "restarting it")
            log.warning("%s: %d broker sockets shut down", self.hostname, reset_connection(self.consumer))
        elif not stall.shutdown_asked and now - stall.restarted_at >= get_settings().consumer_stall_seconds:
            stall.shutdown_asked = True
            self.report(waiting, now - stall.since, "warm shutdown")
            warm_shutdown(self.hostname)
            reset_connection(self.consumer)  # a read blocked on a dead socket returns and sees the flag
        mark(self.hostname, waiting, now - stall.since, stall.action)  # refreshed while it lasts

    def report(self, waiting: list[str], stalled_s: float, cure: str) -> None:
        log.error(
            "consumer of %s stalled: %s hold ready messages, %d slots free, no message for %.0f s: %s",
            self.hostname, ",".join(waiting), self.free_slots(), stalled_s, cure,
        )  # fmt: skip
        for queue in waiting:
            stalls_counter().labels(self.hostname, queue).inc()

    def stop(self) -> None:
        self.thread.stop()


def warm_shutdown(hostname: str) -> None:
    """What Celery's SIGTERM handler does, with EXIT_STALLED: tell the warm shutdown's handlers
    (its grace deadline, worker/runtime/shutdown.py), then set the flag the event loop checks."""
    signals.worker_shutting_down.send(sender=hostname, sig="SIGTERM", how="Warm", exitcode=EXIT_STALLED)
    state.should_stop = EXIT_STALLED


def _sockets(consumer: Any) -> Iterator[socket.socket]:
    """Every socket of the consumer's broker connections: its own (BRPOP, pub/sub, acks, the
    pidbox) and its event dispatcher's (the worker heartbeat's synchronous publish, which blocks
    the event loop for ever on a dead socket). Each kombu channel's redis-py pools hold them.
    Private attributes of kombu and redis-py: a version that renames them leaves nothing to
    reset, and the warm shutdown heals instead."""
    dispatcher = getattr(consumer, "event_dispatcher", None)
    for connection in (getattr(consumer, "connection", None), getattr(dispatcher, "connection", None)):
        transport = getattr(connection, "_transport", None)  # None: never connected, nothing to reset
        for channel in [*getattr(transport, "channels", []), *getattr(transport, "_avail_channels", [])]:
            for pool in (getattr(channel, "_pool", None), getattr(channel, "_async_pool", None)):
                conns = [*getattr(pool, "_available_connections", []), *getattr(pool, "_in_use_connections", [])]
                yield from (sock for conn in conns if (sock := getattr(conn, "_sock", None)) is not None)


def reset_connection(consumer: Any) -> int:
    """Shut the consumer's broker sockets down (never close them: the event loop owns the file
    descriptors, and a closed one would leave it waiting on nothing); returns how many."""
    count = 0
    for sock in _sockets(consumer):
        try:
            sock.shutdown(socket.SHUT_RDWR)
            count += 1
        except OSError:
            pass  # already gone
    return count


def mark(worker: str, queues: list[str], stalled_s: float, action: str, now: float | None = None) -> None:
    """Record the stall of `worker` on `queues` for MedicConsumerStalled (one hash for all workers)."""
    now = time.time() if now is None else now
    key = redis_keys.consumer_stalls()
    entries = {
        f"{worker}|{q}": json.dumps(
            {"worker": worker, "queue": q, "since": now - stalled_s, "at": now, "action": action}
        )
        for q in queues
    }
    pipe = get_redis().pipeline(transaction=False)
    pipe.hset(key, mapping=entries)  # type: ignore[arg-type]
    pipe.expire(key, int(FORGET_AFTER_S))
    pipe.execute()


def read(now: float) -> list[dict[str, Any]]:
    """Every stall marked within FORGET_AFTER_S (the health loop's snapshot)."""
    entries = [json.loads(raw) for raw in get_redis().hgetall(redis_keys.consumer_stalls()).values()]
    return [e for e in entries if now - float(e["at"]) <= FORGET_AFTER_S]


def _make_counter(_: str) -> Counter:
    return Counter(
        "medic_consumer_stalls_total",
        "Times a worker's consumer took no message for MEDIC_CONSUMER_STALL_SECONDS while its queue held "
        "ready ones and it had free slots",
        ["worker", "queue"],
        registry=None,
    )


_counter: PerProcess[str, Counter] = PerProcess(_make_counter)


def stalls_counter() -> Counter:
    return _counter.get("stalls")


_watchdog: PerProcess[tuple[Any, str, tuple[str, ...]], Watchdog] = PerProcess(
    lambda key: Watchdog(*key).start(), close=Watchdog.stop
)


def on_worker_ready(sender: Any, **_: Any) -> None:
    """Watch the consumer once it consumes (sender: the consumer); the same watchdog, and so the
    same stall, across the consumer's restarts."""
    if is_test_worker(sender):
        return
    _watchdog.get((sender, sender.hostname or socket.gethostname(), tuple(consumed_queues(sender.app))))


def on_worker_shutdown(**_: Any) -> None:
    _watchdog.clear()
