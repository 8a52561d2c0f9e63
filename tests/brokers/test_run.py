"""Jobs through a real `celery worker` on each broker: a batch runs once each, a retry comes back
after a short back-off and after a long one (on RabbitMQ the long one waits in the broker's delay
levels, not in the worker's prefetch)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kombu.transport import native_delayed_delivery as delayed

from tests.brokers.selected import Broker
from tests.conftest import switched_env
from tests.ledger_view import assert_no_overlap, job, reasons
from tests.testjobs import executions
from worker.accept import JobRequest, enqueue, enqueue_many
from worker.broker import inspect, rabbitmq
from worker.ledger import db, queries
from worker.ledger.records import Job
from worker.testing.processes import Proc, Processes, wait_for

QUEUE = "q-brk-run"


@pytest.fixture(scope="module")
def worker(bledger: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One worker (2 prefork children) on the broker under test, for the whole module."""
    p = Processes(bledger, tmp_path_factory.mktemp("brk-run"))
    yield p.worker("brk-run", queues=QUEUE, concurrency=2)
    p.stop_all()


def transport_line(broker: Broker) -> str:
    """What a worker on `broker` logs once its consumer has connected."""
    return (
        f"Connected to amqp://guest:**@127.0.0.1:5672/{broker.vhost}" if broker.on_rabbitmq else "Connected to redis://"
    )


def ended(job_id: uuid.UUID, timeout: float = 30) -> Job:
    return wait_for(
        lambda: (r := job(job_id)).state in {"succeeded", "dead"} and r, timeout, 0.05, f"job {job_id} ends"
    )


def test_a_batch_runs_once_each_on_a_real_worker(broker: Broker, worker: Proc) -> None:
    """Given a worker on the broker under test, When 20 jobs are enqueued in one batch,
    Then each succeeds, ran exactly once, and the queue is empty afterwards."""
    # Bugs caught: the worker started on another broker than the one the test names (the env not
    # handed on); a message the worker cannot read (medic's AMQP message unlike Celery's).
    assert transport_line(broker) in worker.log(), worker.log()[:3000]
    tags = [uuid.uuid4().hex for _ in range(20)]
    done = enqueue_many([JobRequest("tests.record", {"tag": t}, queue=QUEUE) for t in tags], tenant="brk")
    ids = [d.job.id for d in done]
    assert all(d.job.published_at is not None for d in done)
    for job_id in ids:
        assert ended(job_id).state == "succeeded", reasons(job_id)
    assert [t for t in tags if len(executions(t)) != 1] == []
    assert inspect.depth(QUEUE) == 0
    assert_no_overlap(ids)


def test_a_retry_after_a_short_back_off_runs_again(worker: Proc) -> None:
    """Given a job that fails its first attempt and a back-off of 0.2 s (under a second: sent
    straight to the queue with its ETA), When it runs, Then the second attempt succeeds."""
    job_id = enqueue("tests.fail_first", {"tag": uuid.uuid4().hex}, queue=QUEUE, tenant="brk").job.id
    done = ended(job_id)
    assert (done.state, done.attempts) == ("succeeded", 2), reasons(job_id)
    assert_no_overlap([job_id])


def delay_levels_ready() -> int:
    """Messages ready in kombu's 28 delay-level queues (RabbitMQ)."""
    return sum(rabbitmq.ready(delayed.level_name(level))[0] for level in range(delayed.MAX_NUMBER_OF_BITS_TO_USE))


def test_a_retry_after_a_long_back_off_waits_in_the_broker(broker: Broker, worker: Proc) -> None:
    """Given a job that fails its first attempt and a back-off of 3 s,
    When its retry is published, Then on RabbitMQ the message waits in the delay levels (the
    worker has not received it), and the second attempt is claimed no earlier than its
    not_before, and succeeds."""
    # Bug caught (RabbitMQ): a delayed message sent straight to its queue with an ETA, where it
    # sits in a worker's prefetch (on a quorum queue, blocking that worker's slot until due).
    with switched_env({"MEDIC_DEFAULT_BACKOFF_SECONDS": "3"}):
        job_id = enqueue("tests.fail_first", {"tag": uuid.uuid4().hex}, queue=QUEUE, tenant="brk").job.id
    retry = wait_for(lambda: (r := job(job_id)).attempts == 1 and r.state == "queued" and r, 20, 0.02, "the retry")
    assert retry.not_before is not None
    if broker.on_rabbitmq:
        wait_for(lambda: delay_levels_ready() == 1, 2, 0.05, "the retry's message in a delay level")
        assert f"[{retry.delivery_id}]" not in worker.log(), "the worker received the retry before it was due"
        assert inspect.depth(QUEUE) == 0
    done = ended(job_id)
    assert (done.state, done.attempts) == ("succeeded", 2), reasons(job_id)
    with db.connect() as conn:
        claims = [e.at for e in queries.get_events(conn, job_id) if e.reason == "claimed"]
    assert claims[1] >= retry.not_before, (claims, retry.not_before)
    assert_no_overlap([job_id])
