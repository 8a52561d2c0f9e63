"""A resuming stream's replay (`since=`): the tenant's events it missed, read from the ledger.

A replay from `since=0` may read the whole event table, so it must not cost other streams
their tail or their key checks: its reads run on a pool of their own
(`ws_replay_max_per_process` threads), at most `ws_replay_max_per_key` of one key's at a time
and at most `ws_replay_max_per_process` in all. Over a bound a read waits its turn (first come,
first served): a replay is slowed, never refused, and while it waits its live events queue up as
for any slow client (overflow, 4008, past `ws_client_queue`). The slot is held for one page's
read, not while the page is sent, so a client slow to read holds no slot.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Gauge

from api.stream_hub import Subscriber, Update
from worker.ledger import db, queries
from worker.settings import get_settings

REPLAY_PAGE = 500
REPLAY_WINDOW_IDS = 20_000

REPLAY_READS = Gauge("medic_stream_replay_reads_running", "Replay page reads running on this API process")
REPLAY_WAITING = Gauge(
    "medic_stream_replay_waiting", "Replay page reads waiting for a slot, by the bound they wait on", ["bound"]
)  # key (ws_replay_max_per_key), process (ws_replay_max_per_process)
REPLAY_READS_TOTAL = Counter("medic_stream_replay_reads_total", "Replay page reads done by this API process")


class ReplaySlots:
    """The per-key and per-process bounds on replay reads, and the pool they run on."""

    def __init__(self, per_process: int, per_key: int) -> None:
        self.per_key = per_key
        self.process = asyncio.Semaphore(per_process)
        self.keys: dict[uuid.UUID, asyncio.Semaphore] = {}
        self.users: collections.Counter[uuid.UUID] = collections.Counter()
        self.pool = concurrent.futures.ThreadPoolExecutor(per_process, thread_name_prefix="medic-replay")

    @contextlib.asynccontextmanager
    async def slot(self, key_id: uuid.UUID) -> AsyncIterator[None]:
        """Held for one read: the key's turn first (so one key never holds every process slot)."""
        key = self.keys.setdefault(key_id, asyncio.Semaphore(self.per_key))
        self.users[key_id] += 1
        try:
            async with _waiting("key", key), _waiting("process", self.process):
                REPLAY_READS.inc()
                try:
                    yield
                finally:
                    REPLAY_READS.dec()
        finally:
            self.users[key_id] -= 1
            if self.users[key_id] <= 0:
                del self.users[key_id], self.keys[key_id]

    async def read(self, key_id: uuid.UUID, fn: Callable[..., list[Update]], *args: Any) -> list[Update]:
        async with self.slot(key_id):
            REPLAY_READS_TOTAL.inc()
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


@contextlib.asynccontextmanager
async def _waiting(bound: str, semaphore: asyncio.Semaphore) -> AsyncIterator[None]:
    """`semaphore` held, the wait for it counted under `bound` (key or process)."""
    with REPLAY_WAITING.labels(bound).track_inprogress():
        await semaphore.acquire()
    try:
        yield
    finally:
        semaphore.release()


_slots: ReplaySlots | None = None


def get_slots() -> ReplaySlots:
    """This process's slots (uvicorn runs one event loop per process)."""
    global _slots
    if _slots is None:
        s = get_settings()
        _slots = ReplaySlots(s.ws_replay_max_per_process, s.ws_replay_max_per_key)
    return _slots


def read_page(sub: Subscriber, after: int, upto: int) -> list[Update]:
    """One page of the client's events in (after, upto], oldest first (blocking: on the pool)."""
    with db.connect() as conn:
        rows = queries.stream_replay(
            conn, sub.tenant, after=after, upto=upto, limit=REPLAY_PAGE,
            job_ids=sorted(sub.job_ids), queue=sub.queue_name, type_=sub.job_type,
        )  # fmt: skip
    return [Update.from_row(r) for r in rows]


async def replay(sub: Subscriber, upto: int, cursor: list[int], send: Callable[[Update], Awaitable[None]]) -> None:
    """Send the client's events in (cursor, upto] from the ledger, moving `cursor` as it goes;
    live ones (> upto) wait in the client's queue meanwhile: nothing missed, nothing twice."""
    slots = get_slots()
    while cursor[0] < upto and not sub.overflow.is_set():
        # A job_id filter reads each job's events on its own index from the job's first event
        # (queries.stream_replay): no window needed. Otherwise the tenant is on `jobs`, not on
        # the events, so an unbounded range would scan every other tenant's events up to the
        # LIMIT: a window of ids bounds each read.
        window_end = upto if sub.job_ids else min(cursor[0] + REPLAY_WINDOW_IDS, upto)
        page = await slots.read(sub.key_id, read_page, sub, cursor[0], window_end)
        for update in page:
            await send(update)
            cursor[0] = update.id
        if len(page) < REPLAY_PAGE:
            cursor[0] = window_end  # nothing else of this client's at or below window_end
