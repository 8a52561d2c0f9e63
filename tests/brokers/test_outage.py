"""The broker goes down, or crashes under load, on a private server: nothing accepted is lost.

The restart test keeps its history outside the system under test, Jepsen-style: each execution
of `nemesis.tick` appends start / tick / end lines to its host's file (tests/nemesis/jobs.py), and
the client appends every id it was answered to its own file; tests/nemesis/checker.py reads both.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import tests.nemesis.jobs  # noqa: F401 - registers nemesis.tick for enqueue()
from tests.brokers import amqp_view
from tests.brokers.private import PrivateBroker, private_broker
from tests.brokers.selected import Broker
from tests.ledger_view import job
from tests.nemesis import checker
from worker.accept import JobRequest, enqueue, enqueue_many
from worker.broker import inspect
from worker.clock import utcnow
from worker.control import reconcile
from worker.ledger import db, queries
from worker.ledger.models import jobs
from worker.testing.processes import Processes, wait_for

pytestmark = pytest.mark.chaos  # private servers crashed: skipped by `make test-fast`
JOB_MODULES = "worker.examples,tests.testjobs,tests.nemesis.jobs"
TERMINAL = {"succeeded", "dead", "cancelled"}


@pytest.fixture(scope="module")
def server(broker: Broker, bledger: dict[str, str]) -> Iterator[PrivateBroker]:
    with private_broker(broker, bledger) as s:
        yield s


def states(ids: list[str]) -> dict[str, str]:
    with db.connect() as conn:
        rows = conn.execute(sa.select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_([uuid.UUID(i) for i in ids])))
        return {str(r.id): r.state for r in rows}


def waiting_ids(server: PrivateBroker, queue: str) -> set[str]:
    if server.kind == "rabbitmq":
        return {str(m.headers["id"]) for m in amqp_view.take(queue)}
    return inspect.delivery_ids([queue], 10_000) or set()


def test_jobs_accepted_while_the_broker_is_down_are_sent_once_it_is_back(server: PrivateBroker) -> None:
    """Given the broker down, When 10 jobs are enqueued, Then each is accepted and marked
    unpublished (the outbox keeps it); once the broker is back, reconcile re-sends all 10 and the
    queue holds exactly their current deliveries."""
    # Bug caught: a refused publish taken for sent (published_at set), so reconcile never re-sends
    # it; on RabbitMQ, a publisher broken by the outage reused (every later publish refused).
    queue = f"q-down-{uuid.uuid4().hex[:8]}"
    server.crash()
    try:
        done = enqueue_many([JobRequest("examples.echo", {"message": str(i)}, queue=queue) for i in range(10)],
                            tenant="brk")  # fmt: skip
    finally:
        server.start()
    ids = [str(d.job.id) for d in done]
    assert states(ids) == dict.fromkeys(ids, "queued")
    assert [job(d.job.id).published_at for d in done] == [None] * 10

    assert reconcile.never_published(utcnow(), 100) == 10
    with db.connect() as conn:
        current = {str(queries.get_job(conn, d.job.id).delivery_id) for d in done}  # type: ignore[union-attr]
    assert waiting_ids(server, queue) == current


class Client:
    """Enqueues `nemesis.tick` jobs at a steady rate from a thread, appending every answer to its
    own log: the accepted ids, and each refusal with its error."""

    def __init__(self, log_dir: Path, queue: str, per_second: float) -> None:
        self.log = log_dir / "client.jsonl"
        self.log_dir, self.queue, self.period = log_dir, queue, 1 / per_second
        self.rng = random.Random(22)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.log.touch()

    def run(self) -> None:
        next_at = time.monotonic()
        with self.log.open("a") as log:
            while not self.stop.is_set():
                args = {"seconds": round(self.rng.uniform(0.05, 0.25), 2), "log_dir": str(self.log_dir)}
                try:
                    accepted = enqueue("nemesis.tick", args, queue=self.queue, tenant="brk", max_attempts=10)
                    line = {"job": str(accepted.job.id)}
                except Exception as exc:  # noqa: BLE001 - a refusal is an answer: logged, not accepted
                    line = {"error": repr(exc)}
                log.write(json.dumps({**line, "t": time.time()}) + "\n")
                log.flush()
                next_at += self.period
                self.stop.wait(max(0.0, next_at - time.monotonic()))

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def accepted(self) -> list[str]:
        return [str(line["job"]) for line in self.lines() if "job" in line]


@pytest.mark.timeout(240)
def test_a_broker_crash_under_load_loses_no_accepted_job(server: PrivateBroker, tmp_path: Path) -> None:
    """Given two workers of one slot, the control loops and a client enqueueing 20 jobs a second
    (more than the workers run: a backlog builds in the broker),
    When the broker is SIGKILLed mid-load, stays down for 10 of the client's answers, and is
    restarted (the client going on throughout),
    Then every job the client was answered for succeeded, each has an execution that ran to its
    end, and no two executions of one job were live at the same time (by the jobs' own history,
    not the ledger's)."""
    # Bugs caught: on Redis, the restart's lost messages never re-sent (run_id check); on RabbitMQ,
    # a publish taken for confirmed before the broker had it, a worker or the control loops that
    # never reconnect, a re-send that lets two deliveries of one job run at once.
    queue = f"q-crash-{uuid.uuid4().hex[:8]}"
    procs = Processes(server.env, tmp_path)
    client = Client(tmp_path, queue, per_second=20)
    try:
        for host in ("a", "b"):
            procs.worker(f"crash-{host}", queues=queue, concurrency=1, MEDIC_JOB_MODULES=JOB_MODULES,
                         NEMESIS_HOST=host)  # fmt: skip
        procs.control_plane(MEDIC_JOB_MODULES=JOB_MODULES)
        client.thread.start()
        try:
            wait_for(lambda: len(client.accepted()) >= 40, 30, 0.1, "load under way")
            wait_for(lambda: inspect.depth(queue) >= 10, 30, 0.05, "a backlog in the broker")
            server.crash()
            down = len(client.lines())
            wait_for(lambda: len(client.lines()) >= down + 10, 30, 0.05, "10 answers while the broker is down")
            crashed = len(client.accepted())
            server.start()
            wait_for(lambda: len(client.accepted()) >= crashed + 20, 60, 0.1, "load after the restart")
        finally:
            client.stop.set()
            client.thread.join(30)
        accepted = client.accepted()
        wait_for(lambda: set(states(accepted).values()) <= TERMINAL, 120, 0.5, "every accepted job finished")
    finally:
        procs.stop_all()

    runs = checker.executions(
        line for f in sorted(tmp_path.glob("hosts/*/history.jsonl")) for line in checker.read_jsonl(f)
    )
    assert checker.lost(accepted, states(accepted)) == [], "accepted jobs not succeeded"
    ended = {r.job for r in runs if r.ended}
    assert [j for j in accepted if j not in ended] == [], "accepted jobs without an execution that ended"
    assert checker.overlaps(runs, {}) == []
    with db.connect() as conn:
        evs = [e for j in accepted for e in queries.get_events(conn, uuid.UUID(j))]
    finishes = [checker.LedgerEvent(str(e.job_id), e.to_state, e.reason, str(e.delivery_id), e.attempt, 0) for e in evs]
    assert checker.duplicate_finishes(finishes) == {}
    refused = [line for line in client.lines() if "error" in line]
    resent = Counter(e.reason for e in evs if e.reason in {"unpublished", "broker_restarted", "message_lost"})
    print(
        f"\n{server.kind}: {len(accepted)} accepted, {len(refused)} refused, {len(runs)} executions, re-sent {resent}"
    )
