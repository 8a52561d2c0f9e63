"""The stream's promise under open transactions, on a real API process and PostgreSQL: every
committed event delivered once, in id order, however many ids an open transaction holds and for
however long (up to the resync bound); a rolled-back range is crossed, never delivered.

Each test holds a transaction that inserted job_events (its ids taken, not committed) while later
events commit, records every message a client receives, and checks the history against the
ledger's rows: none missing, none twice, ascending."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from api.stream_hub import Hub
from tests.api.test_stream import open_stream, recv
from tests.api.test_stream_load import make_jobs
from tests.conftest import KeyFactory
from worker.ledger import db
from worker.testing.processes import Processes, wait_for

INSERT = sa.text(
    "INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt)"
    " SELECT :job, now(), 'queued', 'queued', 'test', :tag || '-' || g, g FROM generate_series(1, :n) g"
)
# no client-side coalescing in these tests: a queue that holds every event of the largest one
BIG_QUEUE = "50000"


class Recorder:
    """Every message one stream client receives, read on a thread of its own (as a client does)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            for frame in self.ws:
                self.messages.append(json.loads(frame))

    def ids(self) -> list[int]:
        return [int(m["cursor"]) for m in list(self.messages) if m["type"] == "transition"]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in list(self.messages) if m["type"] == kind]


@contextlib.contextmanager
def recorded(api: str, key: str, **params: Any) -> Iterator[tuple[Recorder, int]]:
    with open_stream(api, key, **params) as ws:
        hello = recv(ws, 30)  # an API's first stream may wait START_WAIT_S (10 s) for its tail
        assert hello["type"] == "subscribed", hello
        yield Recorder(ws), int(hello["cursor"])


def ledger_ids(job: uuid.UUID, after: int) -> list[int]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id FROM job_events WHERE job_id = :job AND id > :after ORDER BY id"),
            {"job": job, "after": after},
        )
        return [int(r[0]) for r in rows]


def commit_events(job: uuid.UUID, n: int, tag: str) -> None:
    with db.begin() as conn:
        conn.execute(INSERT, {"job": job, "n": n, "tag": tag})


def assert_history(rec: Recorder, job: uuid.UUID, after: int) -> None:
    """The client got exactly the ledger's committed events of `job` past `after`, once each, in
    id order. Waits for the last one (it comes last when nothing is skipped), then a moment more
    for anything extra."""
    want = ledger_ids(job, after)
    with contextlib.suppress(AssertionError):  # the comparison below says what went missing
        wait_for(lambda: want[-1] in rec.ids(), 60, 0.05, "the newest event")
    time.sleep(0.3)  # not a wait for a condition: a window in which a duplicate would show
    got = rec.ids()
    missing = sorted(set(want) - set(got))
    assert not missing, f"delivered {len(set(got) & set(want)):,} of {len(want):,}; first missing {missing[:5]}"
    assert len(got) == len(set(got)), f"{len(got) - len(set(got))} delivered twice"
    assert got == sorted(got), "not in id order"
    assert set(got) == set(want), f"delivered ids not in the ledger: {sorted(set(got) - set(want))[:5]}"


def hold_open_then_commit(job: uuid.UUID, n_open: int, *, hold_s: float = 0.0) -> None:
    """A transaction takes `n_open` event ids and stays open `hold_s` while a later event commits;
    then it commits. (Delivering the later event first would show as an order or a loss.)"""
    with db.get_engine().connect() as t1:
        t1.begin()
        t1.execute(INSERT, {"job": job, "n": n_open, "tag": "open"})
        commit_events(job, 1, "later")
        time.sleep(hold_s)  # not a wait for a condition: the transaction held open IS the scenario
        t1.commit()


@pytest.fixture
def api(procs: Processes) -> str:
    return procs.api("holes-api", MEDIC_WS_CLIENT_QUEUE=BIG_QUEUE)[1]


@pytest.mark.parametrize("n_open", [1_501, 10_501])
def test_every_event_of_a_wide_open_transaction_is_delivered_once_in_order(
    api: str, make_key: KeyFactory, n_open: int
) -> None:
    tenant, key = make_key()
    (job,) = make_jobs(tenant, 1)
    with recorded(api, key, job_id=str(job)) as (rec, start):
        hold_open_then_commit(job, n_open, hold_s=1.0)
        assert_history(rec, job, start)
    assert len(ledger_ids(job, start)) == n_open + 1


def test_a_transaction_open_12_s_is_delivered_in_order_with_the_default_wait(api: str, make_key: KeyFactory) -> None:
    tenant, key = make_key()
    (job,) = make_jobs(tenant, 1)
    with recorded(api, key, job_id=str(job)) as (rec, start):
        hold_open_then_commit(job, 3, hold_s=12.0)
        assert_history(rec, job, start)
        assert not rec.of_type("resync")


def test_a_rolled_back_wide_range_is_crossed_without_being_delivered(api: str, make_key: KeyFactory) -> None:
    tenant, key = make_key()
    (job,) = make_jobs(tenant, 1)
    with recorded(api, key, job_id=str(job)) as (rec, start):
        with db.get_engine().connect() as t1:
            t1.begin()
            t1.execute(INSERT, {"job": job, "n": 10_501, "tag": "doomed"})
            commit_events(job, 1, "later")
            t1.rollback()
        (later,) = ledger_ids(job, start)
        wait_for(lambda: later in rec.ids(), 30, 0.05, "the event past the rolled-back range")
        assert rec.ids() == [later] and not rec.of_type("resync")


def test_past_the_wait_bound_clients_get_resync_and_the_range_replays(procs: Processes, make_key: KeyFactory) -> None:
    """MEDIC_WS_HOLE_WAIT_SECONDS=1: a transaction open longer is passed with a `resync` naming its
    range (never silently); when it commits, a second `resync` names its events, and a replay with
    since=<from - 1> returns them."""
    _, api = procs.api("resync-api", MEDIC_WS_CLIENT_QUEUE=BIG_QUEUE, MEDIC_WS_HOLE_WAIT_SECONDS="1")
    tenant, key = make_key()
    (job,) = make_jobs(tenant, 1)
    with recorded(api, key, job_id=str(job)) as (rec, start):
        with db.get_engine().connect() as t1:
            t1.begin()
            t1.execute(INSERT, {"job": job, "n": 5, "tag": "slow"})
            commit_events(job, 1, "later")
            (later,) = ledger_ids(job, start)
            wait_for(lambda: later in rec.ids(), 30, 0.05, "the stream to move past the open range")
            first = rec.of_type("resync")
            t1.commit()
        slow = ledger_ids(job, start)[:5]
        assert len(first) == 1 and int(first[0]["from"]) <= slow[0] and int(first[0]["to"]) >= slow[-1], first
        assert int(first[0]["cursor"]) < later  # told before the later event, at its place in order
        wait_for(lambda: len(rec.of_type("resync")) == 2, 30, 0.05, "a resync naming the late events")
        late = rec.of_type("resync")[1]
        assert (int(late["from"]), int(late["to"])) == (slow[0], slow[-1]), late
        assert rec.ids() == [later]
    with recorded(api, key, job_id=str(job), since=str(int(late["from"]) - 1)) as (replay, _):
        wait_for(lambda: later in replay.ids(), 30, 0.05, "the replay")
        assert replay.ids() == [*slow, later]


@pytest.mark.usefixtures("medic_env")
def test_the_tail_reads_on_its_own_thread_while_the_default_pool_is_busy() -> None:
    """Replays and key checks run on the default executor; a burst of them (here: one that never
    ends, on a pool of one) must not hold back the tail's read."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))
        release = threading.Event()
        blocker = loop.run_in_executor(None, release.wait)
        hub = Hub()
        try:
            await asyncio.wait_for(hub.poll_once(), 20)  # a deadlock guard, not a timing
        finally:
            release.set()
            await blocker
            await hub.stop()

    asyncio.run(main())


def test_ids_open_when_the_api_starts_are_named_by_a_resync_when_they_commit(api: str, make_key: KeyFactory) -> None:
    """The tail starts at the ledger's end; its first clients wait START_WAIT_S at most for the
    transactions then open. Ids below the end still uncommitted after that are watched: a client
    is told of them (committed resync) when they commit, never silently left without them."""
    tenant, key = make_key()
    (job,) = make_jobs(tenant, 1)
    with db.get_engine().connect() as t1:
        t1.begin()
        t1.execute(INSERT, {"job": job, "n": 3, "tag": "open-at-start"})
        commit_events(job, 1, "end")
        with recorded(api, key, job_id=str(job)) as (rec, start):  # this API's first stream: its tail starts
            # here, and subscribes it once START_WAIT_S has passed with t1 still open
            t1.commit()
            wait_for(lambda: rec.of_type("resync"), 30, 0.05, "a resync naming the ids committed late")
            (late,) = rec.of_type("resync")
            opened = ledger_ids(job, 0)[:3]
            assert (late["state"], int(late["from"]), int(late["to"])) == ("committed", opened[0], opened[-1])
            assert int(late["to"]) < start and not rec.ids()
    with recorded(api, key, job_id=str(job), since=str(int(late["from"]) - 1)) as (replay, _):
        wait_for(lambda: len(replay.ids()) == 4, 30, 0.05, "the replay")
        assert replay.ids() == ledger_ids(job, 0)
