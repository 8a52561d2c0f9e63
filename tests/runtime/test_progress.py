"""The stall watchdog's decisions, one look at a time with the clock passed in, against real Redis
and real sockets (the worker and its broker connection are stand-ins; tests/chaos/test_consumer_stall.py
runs the real thing)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from celery import signals as celery_signals
from celery.utils.dispatch.signal import Signal
from celery.worker import state

from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.control.alert_rules import STALL_WINDOW_S, consumer_stalled
from worker.runtime import progress
from worker.settings import Settings, get_settings

WORKER = "w-progress@host"
QUEUE = "q-progress"


@dataclass
class Broker:
    """The worker's one broker socket and its far end."""

    ours: socket.socket
    theirs: socket.socket

    def consumer(self, slots: int = 2) -> Any:
        """A stand-in for Celery's consumer, its connection holding `ours` the way kombu's does."""
        conn = SimpleNamespace(_sock=self.ours)
        channel = SimpleNamespace(_pool=SimpleNamespace(_available_connections=[], _in_use_connections=[conn]))
        return SimpleNamespace(
            app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from={QUEUE: None}))),
            pool=SimpleNamespace(num_processes=slots), controller=SimpleNamespace(concurrency=slots),
            connection=SimpleNamespace(_transport=SimpleNamespace(channels=[channel])), event_dispatcher=None,
        )  # fmt: skip

    def reset(self) -> bool:
        """Whether the worker's socket was shut down: the far end reads the end of the stream."""
        self.theirs.settimeout(0.5)
        try:
            return self.theirs.recv(1) == b""
        except TimeoutError:
            return False


@pytest.fixture
def broker(medic_env: dict[str, str]) -> Iterator[Broker]:
    pair = Broker(*socket.socketpair())
    yield pair
    get_redis().delete(*redis_keys.queue_lists(QUEUE), redis_keys.consumer_stalls())
    pair.ours.close()
    pair.theirs.close()


def _ready(n: int = 1) -> None:
    get_redis().lpush(redis_keys.queue_list_for(QUEUE, 0), *["{}"] * n)


def _looks(dog: progress.Watchdog, start: float, end: float, before_each: Callable[[], object] = lambda: None) -> None:
    """The watchdog's looks from `start` to `end` (both included), one per heartbeat as its thread makes them."""
    beat = get_settings().heartbeat_seconds
    for i in range(int((end - start) / beat) + 1):
        before_each()
        dog.check(now=min(start + i * beat, end))
    before_each()
    dog.check(now=end)


def _counted() -> float:
    samples = [s for m in progress.stalls_counter().collect() for s in m.samples if s.name.endswith("_total")]
    return sum(s.value for s in samples if s.labels == {"worker": WORKER, "queue": QUEUE})


def test_ready_jobs_free_slots_and_no_arrival_for_the_threshold_restart_the_consumer(broker: Broker) -> None:
    n = get_settings().consumer_stall_seconds
    dog = progress.Watchdog(broker.consumer(), WORKER, (QUEUE,))
    counted = _counted()
    _ready()
    _looks(dog, 100.0, 100.0 + n - 0.01)
    assert dog.stall is None and not broker.reset(), "not before the threshold"
    dog.check(now=100.0 + n)
    assert broker.reset(), "the consumer's broker socket was shut down"
    [mark] = progress.read(0)
    assert (mark["worker"], mark["queue"], mark["action"]) == (WORKER, QUEUE, "restart")
    assert mark["at"] - mark["since"] == pytest.approx(n)
    assert _counted() == counted + 1


@pytest.mark.parametrize("what", ["an arrival", "an empty queue", "no free slot", "a warm shutdown", "a reconnect"])
def test_no_stall(broker: Broker, what: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "should_stop", 0 if what == "a warm shutdown" else None)  # 0: SIGTERM's EX_OK
    n = get_settings().consumer_stall_seconds
    consumer = broker.consumer(slots=0 if what == "no free slot" else 2)
    if what == "a reconnect":
        consumer.connection = None  # Celery's consumer while it connects again (after a broker loss)
    dog = progress.Watchdog(consumer, WORKER, (QUEUE,))
    if what != "an empty queue":
        _ready()
    _looks(dog, 0.0, 2 * n, before_each=progress.on_task_received if what == "an arrival" else lambda: None)
    assert dog.stall is None and progress.read(0) == []
    assert not broker.reset()


def test_still_stalled_after_the_restart_asks_a_warm_shutdown(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "should_stop", None)
    told: list[dict[str, Any]] = []
    shutting_down = Signal(name="worker_shutting_down")  # this process's own handlers stay out of it
    shutting_down.connect(lambda sender, **kw: told.append({"sender": sender, **kw}), weak=False)
    monkeypatch.setattr(celery_signals, "worker_shutting_down", shutting_down)
    n = get_settings().consumer_stall_seconds
    dog = progress.Watchdog(broker.consumer(), WORKER, (QUEUE,))
    _ready()
    _looks(dog, 0.0, n)
    assert dog.stall is not None and dog.stall.restarted_at == n and state.should_stop is None
    _looks(dog, n, 2 * n - 0.01)
    assert state.should_stop is None
    dog.check(now=2 * n)
    assert state.should_stop == progress.EXIT_STALLED
    assert [(t["sender"], t["how"], t["exitcode"]) for t in told] == [(WORKER, "Warm", progress.EXIT_STALLED)]
    [mark] = progress.read(0)
    assert mark["action"] == "shutdown"


def test_a_message_after_the_restart_ends_the_stall(broker: Broker) -> None:
    n = get_settings().consumer_stall_seconds
    dog = progress.Watchdog(broker.consumer(), WORKER, (QUEUE,))
    _ready()
    _looks(dog, 0.0, n)
    assert dog.stall is not None
    progress.on_task_received()
    dog.check(now=n + 0.5)
    assert dog.stall is None and dog.waiting_since is None


def test_a_pause_of_the_process_is_no_stall(broker: Broker) -> None:
    """SIGSTOP, a frozen VM: the consumer had no chance either, so the clock starts again after it."""
    n = get_settings().consumer_stall_seconds
    beat = get_settings().heartbeat_seconds
    dog = progress.Watchdog(broker.consumer(), WORKER, (QUEUE,))
    _ready()
    _looks(dog, 0.0, n / 2)
    resumed = n / 2 + 10 * n
    _looks(dog, resumed, resumed + n)  # the first look after the pause only notices it
    assert dog.stall is None and not broker.reset()
    dog.check(now=resumed + n + beat)
    assert dog.stall is not None and broker.reset(), "a stall all the same once it lasts n after the pause"


def test_the_alert_reports_a_mark_for_its_window() -> None:
    s = Settings()
    mark = {"worker": WORKER, "queue": QUEUE, "since": 900.0, "at": 930.0, "action": "restart"}
    snap: Any = {"at": 930.0 + STALL_WINDOW_S, "consumer_stalls": [mark]}
    [finding] = consumer_stalled(snap, s)
    assert finding.labels == {"worker": WORKER, "queue": QUEUE} and finding.value == 30.0
    snap["at"] += 1
    assert consumer_stalled(snap, s) == []


def test_the_stall_threshold_must_be_longer_than_a_heartbeat() -> None:
    with pytest.raises(ValueError, match=r"MEDIC_CONSUMER_STALL_SECONDS \(2\) must be longer than MEDIC_HEARTBEAT"):
        Settings(profile="production", consumer_stall_seconds=2.0, heartbeat_seconds=2.0)
    ok = Settings(profile="production", consumer_stall_seconds=2.5, heartbeat_seconds=2.0)
    assert ok.consumer_stall_seconds == 2.5
