"""Arrival counters (the backpressure loop's arrival rates) go out with the messages they count."""

from __future__ import annotations

import uuid

from worker import enqueue, enqueue_many
from worker.accept import JobRequest
from worker.broker import counters
from worker.broker.publish import publish


def test_new_jobs_count_as_arrivals_and_a_resend_does_not(medic_env: dict[str, str]) -> None:
    # Bugs caught: the counters no longer sent (rates read 0: no backpressure, no scale-up); a
    # batch counted once instead of per job; a re-send of a known job (reconcile, recovery)
    # counted as new work; a queue missing from the known set (the loops would never look at it).
    one, two = f"q-arr-{uuid.uuid4().hex[:6]}", f"q-arr-{uuid.uuid4().hex[:6]}"
    enqueue_many([JobRequest("examples.echo", {"message": str(i)}, queue=one) for i in range(3)])
    single = enqueue("examples.echo", {"message": "x"}, queue=two)
    assert counters.read(one) == (3, 0)
    assert counters.read(two) == (1, 0)
    assert {one, two} <= set(counters.known_queues())
    assert publish([single.job]) == []  # the same delivery sent again, by hand
    assert counters.read(two) == (1, 0)
