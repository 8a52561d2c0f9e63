"""A worker alive but not consuming (celery 8082, 10205): its broker connections go half-open."""

from __future__ import annotations

import re
import socket
import uuid
from urllib.parse import urlsplit

import httpx

from tests.chaos.conftest import submit
from tests.conftest import REDIS_URL
from tests.ledger_view import assert_no_overlap, job
from tests.runtime.blackhole import BlackholeProxy
from tests.testjobs import executions
from worker.broker import redis_keys
from worker.broker.redis_client import get_redis
from worker.control import alerts
from worker.runtime import progress
from worker.settings import get_settings
from worker.testing.processes import Proc, Processes, free_port, wait_for

QUEUE = "chaos-stall"
RECONNECT_S = 2.0  # broker_connection_timeout: Celery's reconnect once its sockets are shut down


def _submit(n: int) -> dict[str, uuid.UUID]:
    tags = [uuid.uuid4().hex for _ in range(n)]
    return {t: submit("tests.record", {"tag": t, "seconds": 0.05}, queue=QUEUE) for t in tags}


def _succeeded(jobs: dict[str, uuid.UUID]) -> bool:
    return all(job(j).state == "succeeded" for j in jobs.values())


def _stall_mark(worker: str) -> dict[str, object] | None:
    return next((m for m in progress.read(0) if m["worker"] == worker and m["queue"] == QUEUE), None)


def _firing(worker: str) -> bool:
    labels = {"worker": worker, "queue": QUEUE}
    return any(a["name"] == "MedicConsumerStalled" and a["labels"] == labels and a["firing"] for a in alerts.active())


def _stalls_counted(metrics_port: int, worker: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    found = re.search(rf'medic_consumer_stalls_total{{queue="{QUEUE}",worker="{re.escape(worker)}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


class Stalling:
    """A worker whose broker connections (and medic's own Redis client) go through a black-hole proxy."""

    def __init__(self, cprocs: Processes) -> None:
        upstream = urlsplit(REDIS_URL)
        self.proxy = BlackholeProxy((upstream.hostname or "127.0.0.1", upstream.port or 6379))
        self.url = REDIS_URL.replace(f"{upstream.hostname}:{upstream.port}", f"127.0.0.1:{self.proxy.port}")
        self.metrics_port = free_port()
        self.cprocs = cprocs
        self.name = f"chaos-stall@{socket.gethostname()}"
        self.proc = self.start()

    def start(self) -> Proc:
        """The worker, started anew as its supervisor would."""
        return self.cprocs.worker("chaos-stall", queues=QUEUE, concurrency=2, MEDIC_REDIS_URL=self.url,
                                  MEDIC_METRICS_PORT=str(self.metrics_port))  # fmt: skip


def _bounds() -> tuple[float, float]:
    """(detect, heal): a stall is seen N s to N s + a heartbeat after the last message (two
    heartbeats here, for the look's own time), and the restart reconnects within RECONNECT_S."""
    s = get_settings()
    detect_s = s.consumer_stall_seconds + 2 * s.heartbeat_seconds
    return detect_s, detect_s + RECONNECT_S


def test_a_consumer_on_half_open_connections_is_restarted_and_every_job_runs_once(cprocs: Processes) -> None:
    """Given a worker whose broker connections go through a proxy, consuming, and the control loops,
    When every connection it holds is black-holed (no FIN, no RST: half-open) while jobs keep coming,
    Then its watchdog marks the stall, MedicConsumerStalled fires with the worker and the queue,
    the consumer reconnects in place (same process) within the stall threshold plus two heartbeats
    and a reconnect, and every job succeeds exactly once."""
    detect_s, heal_s = _bounds()
    w = Stalling(cprocs)
    cprocs.control_plane()  # on Redis directly, like the API: reconcile re-sends a message the black hole ate
    before = _submit(10)
    wait_for(lambda: _succeeded(before), 30, 0.1, "the worker consumes")
    assert _stall_mark(w.name) is None

    accepted = w.proxy.accepted
    assert w.proxy.blackhole() > 0
    during = _submit(10)
    mark = wait_for(lambda: _stall_mark(w.name), detect_s + 10, 0.05, "the stall marked")
    assert mark["action"] == "restart"
    after = _submit(10)
    lost_s = get_settings().lost_after_seconds  # a message the dead BRPOP popped: re-sent by reconcile
    wait_for(lambda: _succeeded(during | after), heal_s + lost_s + 20, 0.1, "every job after it")
    wait_for(lambda: _firing(w.name), 30, 0.1, "MedicConsumerStalled firing")

    assert w.proc.alive(), "healed in place: no warm shutdown"
    assert "Connection to broker lost" in w.proc.log(), "Celery's consumer reconnected"
    assert w.proxy.accepted_since(accepted) > 0, "through new connections"
    assert _stalls_counted(w.metrics_port, w.name) == 1
    _ran_once(before | during | after)
    w.proxy.close()


def test_a_consumer_no_reconnect_heals_gets_a_warm_shutdown_for_its_supervisor(cprocs: Processes) -> None:
    """Given the same worker, When every connection that sends a BRPOP turns black (the consumer's,
    however often it reconnects, while every other command goes through),
    Then the watchdog restarts the consumer, and, stalled still a threshold later, asks a warm
    shutdown: the worker exits with EXIT_STALLED; started anew (its supervisor's part), it runs
    every job, each once."""
    detect_s, heal_s = _bounds()
    w = Stalling(cprocs)
    cprocs.control_plane()
    before = _submit(5)
    wait_for(lambda: _succeeded(before), 30, 0.1, "the worker consumes")

    w.proxy.trap = b"BRPOP"
    w.proxy.blackhole()
    during = _submit(10)
    wait_for(lambda: not w.proc.alive(), heal_s + detect_s + 20, 0.1, "the stalled worker exits")
    assert w.proc.popen.returncode == progress.EXIT_STALLED, w.proc.log()[-3000:]
    assert (mark := _stall_mark(w.name)) and mark["action"] == "shutdown"
    log = w.proc.log()
    assert 0 < log.index("stalled: chaos-stall hold ready messages") < log.index(": warm shutdown")

    w.proxy.trap = None
    w.proc = w.start()
    after = _submit(5)
    wait_for(lambda: _succeeded(during | after), 60, 0.1, "every job, by the worker started anew")
    _ran_once(before | during | after)
    w.proxy.close()


def _ran_once(jobs: dict[str, uuid.UUID]) -> None:
    twice = [t for t in jobs if len(executions(t)) != 1]
    assert twice == [], f"{len(twice)} jobs ran other than once"
    assert_no_overlap(jobs.values())
    get_redis().delete(redis_keys.consumer_stalls())
