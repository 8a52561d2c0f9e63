"""Admission reservations expire one by one and never count below zero.

The old design was one counter per queue whose TTL every admit refreshed: a reservation leaked
by a killed API process then never expired under steady traffic (the watermark shrank for good),
and a release after expiry drove the counter negative (over-admission).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import KeyFactory, switched_env
from worker.accept import admission
from worker.errors import QueueFullError
from worker.ledger import db
from worker.testing.processes import Processes, wait_for

HIGH = 10


@pytest.fixture
def queue(medic_env: dict[str, str]) -> Iterator[str]:
    """A queue of its own with a high watermark of 10, in this process's settings."""
    name = f"resv-{uuid.uuid4().hex[:8]}"
    with switched_env({"MEDIC_QUEUE_WATERMARKS": json.dumps({name: [HIGH, HIGH // 2]})}):
        yield name


def full_headroom(queue: str, *, traffic: bool = False) -> bool:
    """True if the whole watermark can be reserved (nothing else holds any of it)."""
    if traffic:  # another client admitted and done, as steady traffic does
        admission.admit(queue, 1, 0).release()
    try:
        admission.admit(queue, HIGH, 0).release()
    except QueueFullError:
        return False
    return True


def test_a_leaked_reservation_stops_counting_after_its_ttl_under_steady_traffic(queue: str) -> None:
    admission.admit(queue, 6, 0, ttl_ms=1500)  # never released: what a killed process leaves
    assert admission.reserved(queue) == 6
    assert not full_headroom(queue, traffic=True)
    start = time.monotonic()
    wait_for(lambda: full_headroom(queue, traffic=True), 10, 0.05, "the leaked reservation to expire")
    assert time.monotonic() - start < 5
    assert admission.reserved(queue) == 0


def test_a_release_after_expiry_never_goes_negative_nor_over_admits(queue: str) -> None:
    late = admission.admit(queue, 4, 0, ttl_ms=200)
    wait_for(lambda: admission.reserved(queue) == 0, 5, 0.05, "the reservation to expire")
    held = admission.admit(queue, HIGH, 0)  # the whole watermark, taken after the expiry
    late.release()  # the old DECRBY here made room that did not exist
    assert admission.reserved(queue) == HIGH
    with pytest.raises(QueueFullError):
        admission.admit(queue, 1, 0)
    held.release()
    held.release()  # twice: still exactly its own, never below zero
    assert admission.reserved(queue) == 0
    assert full_headroom(queue)


def test_a_release_frees_exactly_its_own_reservation(queue: str) -> None:
    a = admission.admit(queue, 3, 0)
    b = admission.admit(queue, 3, 0)
    a.release()
    assert admission.reserved(queue) == 3
    b.release()
    assert admission.reserved(queue) == 0


def test_an_api_killed_mid_admission_gives_its_headroom_back_within_the_ttl(
    procs: Processes, queue: str, make_key: KeyFactory
) -> None:
    """Given an API process holding a reservation (its INSERT blocked by a table lock), When it
    is SIGKILLed, Then the full watermark is available again within the reservation TTL while
    this process keeps admitting."""
    proc, url = procs.api(
        "api-killed", MEDIC_QUEUE_WATERMARKS=json.dumps({queue: [HIGH, HIGH // 2]}), MEDIC_QUEUES=queue
    )
    _, key = make_key()
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            httpx.post(
                url + "/jobs",
                json={"type": "examples.echo", "args": {"message": "x"}, "queue": queue},
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
        except httpx.HTTPError as exc:  # the server dies mid-request: expected
            errors.append(exc)

    with db.get_engine().connect() as locker:
        # SHARE blocks the INSERT of jobs but not the quota's SELECT: the API admits, then hangs.
        locker.execute(sa.text("LOCK TABLE jobs IN SHARE MODE"))
        thread = threading.Thread(target=submit)
        thread.start()
        wait_for(lambda: not full_headroom(queue), 15, 0.05, "the API to hold a reservation")
        proc.kill_group()
        proc.popen.wait(timeout=10)
        locker.rollback()
    thread.join(timeout=30)
    assert errors, "the request must have died with its process"
    assert not full_headroom(queue), "the killed process's reservation is still counted"
    start = time.monotonic()
    wait_for(lambda: full_headroom(queue, traffic=True), admission.PENDING_TTL_MS / 1000 + 10, 0.1, "headroom back")
    assert time.monotonic() - start <= admission.PENDING_TTL_MS / 1000 + 2
