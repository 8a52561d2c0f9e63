"""The stream's pure parts, without a server: a client's bounded queue and the hole rule."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator

import pytest

from api import stream_hub
from api.stream_hub import ClientQueue, Hub, Update
from worker.settings import reset_settings

JOBS = [uuid.uuid4() for _ in range(4)]


def upd(id_: int, job: int = 0, tenant: str = "t") -> Update:
    return Update(id_, JOBS[job], "queued", "running", f"r{id_}", 1, dt.datetime.now(dt.UTC), tenant, "q", "x")


def drained(q: ClientQueue) -> list[tuple[int, int]]:
    return [(u.id, dropped) for u, dropped in q.items]


def test_a_full_queue_keeps_the_latest_update_of_each_job_in_cursor_order() -> None:
    q = ClientQueue(4)
    for i, job in enumerate([0, 1, 0, 1], 1):
        assert q.put(upd(i, job))
    assert q.put(upd(5, 2))  # full: coalesced to jobs 0 (3) and 1 (4), then 5 appended
    assert drained(q) == [(3, 1), (4, 1), (5, 0)]
    assert [u.id for u, _ in q.items] == sorted(u.id for u, _ in q.items)


def test_a_queue_that_coalescing_cannot_free_overflows_and_lets_go_of_its_items() -> None:
    q = ClientQueue(3)
    for i in range(3):
        assert q.put(upd(i + 1, i))
    assert not q.put(upd(4, 3))  # four distinct jobs in three slots
    assert q.overflowed and not q.items
    assert not q.put(upd(5, 0))
    assert asyncio.run(q.get()) is None


def absorb(hub: Hub, updates: list[Update], xmin: int, xmax: int, now: float) -> list[int | str]:
    """One read through the hub as the tail makes it; what it releases: ids, or "lo..hi" resyncs."""
    ready, _ = hub.absorb(hub.plan(), updates, xmin, xmax, now)
    return [u.id if isinstance(u, Update) else f"{u.lo}..{u.hi}" for u in ready]


def test_events_behind_a_hole_wait_until_it_fills() -> None:
    hub = Hub()
    hub.released = hub.fetched = 10
    assert absorb(hub, [upd(11), upd(13)], xmin=100, xmax=101, now=0.0) == [11]
    assert hub.holes.spans() == [(12, 12)]
    assert absorb(hub, [upd(14)], xmin=100, xmax=101, now=0.1) == []  # 13, 14 held back behind 12
    assert absorb(hub, [upd(12)], xmin=100, xmax=101, now=0.2) == [12, 13, 14]
    assert hub.released == 14 and not hub.holes and not hub.pending


def test_a_hole_is_given_up_once_every_transaction_that_could_fill_it_has_ended() -> None:
    hub = Hub()
    hub.released = hub.fetched = 10
    assert absorb(hub, [upd(12)], xmin=100, xmax=105, now=0.0) == []
    assert absorb(hub, [], xmin=104, xmax=106, now=1.0) == []  # armed at 106; 104, 105 may still commit 11
    assert absorb(hub, [], xmin=105, xmax=107, now=1.1) == []
    assert absorb(hub, [], xmin=106, xmax=107, now=1.2) == [12]  # every transaction before 106 ended


@pytest.fixture
def wait_10s(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MEDIC_WS_HOLE_WAIT_SECONDS", "10")
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


@pytest.mark.usefixtures("wait_10s")
def test_a_hole_open_past_the_wait_is_passed_with_a_resync_and_its_late_event_named() -> None:
    hub = Hub()
    hub.released = hub.fetched = 10
    assert absorb(hub, [upd(13)], xmin=100, xmax=101, now=0.0) == []
    assert absorb(hub, [], xmin=100, xmax=101, now=9.0) == []  # transaction 100 still open
    assert absorb(hub, [upd(14)], xmin=100, xmax=102, now=10.5) == ["11..12", 13, 14]
    assert hub.released == 14 and hub.late.spans() == [(11, 12)]
    ready, late = hub.absorb(hub.plan(), [upd(12)], xmin=100, xmax=102, now=11.0)
    assert ready == [] and {origin: [u.id for u in ups] for origin, ups in late.items()} == {11: [12]}
    assert hub.late.spans() == [(11, 11)]


def test_coalescing_that_frees_less_than_a_tenth_is_an_overflow() -> None:
    """Else a queue of nearly all distinct jobs would re-coalesce (O(queue)) on every update."""
    jobs = [uuid.uuid4() for _ in range(20)]

    def fill(distinct: int) -> ClientQueue:
        q = ClientQueue(20)
        for i in range(20):
            job = jobs[i % distinct]
            assert q.put(Update(i + 1, job, None, "queued", "r", 0, dt.datetime.now(dt.UTC), "t", "q", "x"))
        return q

    roomy = fill(18)  # coalescing frees 2 of 20: enough
    assert roomy.put(upd(100, 0)) and len(roomy.items) == 19
    tight = fill(19)  # frees 1 of 20: not enough
    assert not tight.put(upd(100, 0)) and tight.overflowed


def test_past_max_pending_held_back_the_tail_reads_only_its_holes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events behind an open hole are held in memory: bounded, the tail stops reading new ones."""
    monkeypatch.setattr(stream_hub, "MAX_PENDING", 2)
    hub = Hub()
    hub.released = hub.fetched = 10
    assert absorb(hub, [upd(11), upd(13), upd(14)], xmin=100, xmax=101, now=0.0) == [11]
    assert hub.plan().after is None and hub.plan().holes == [(12, 12)]
    assert absorb(hub, [upd(12)], xmin=100, xmax=101, now=0.1) == [12, 13, 14]
    assert hub.plan().after == 14
