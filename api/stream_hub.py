"""One tail of `job_events` per API process, fanned out to every `WS /jobs/stream` client.

The ledger's `job_events` table is already the durable, ordered record of every transition, and
its BIGSERIAL id is the stream's cursor: no change to the write path, and a resume is a range
read. One task per process polls `WHERE id > :last OR id IN (:holes) ORDER BY id LIMIT n` (one
query per process, whatever the number of clients) and hands each event to the subscribers of its
tenant, each with its own bounded queue.

The race this module exists for: a sequence id is taken at INSERT, not at COMMIT, so id 10 can
become visible after id 11. A tail at `last = 11` would skip 10 for ever. Every id below the
high-water mark that has not been seen is a *hole*; events are released to clients strictly in id
order, so a release stops at the lowest open hole until that hole fills (its transaction commits)
or is settled as never coming: every transaction that was running when the hole was seen has
ended (PostgreSQL snapshot xmin has passed the xmax seen then: it rolled back) or
`ws_hole_wait_seconds` have passed. In-order release is what makes the cursor a plain number: a
client that saw cursor C has seen, or will never need, everything at or below C.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge
from sqlalchemy.engine import Connection

from worker.ledger import db, queries
from worker.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

TAIL_PAGE = 1000
MAX_HOLES = 10_000  # a gap wider than this (a rolled-back bulk insert) is settled at once, logged
DISPATCH_CHUNK = 50  # updates dispatched between two yields to the writers
HOLE_MIN_AGE_S = 0.25  # nextval may come a moment before the inserting transaction takes its xid


STREAMS = Gauge("medic_stream_connections", "WS /jobs/stream clients subscribed to this API process")
STREAM_CLOSED = Counter("medic_stream_closed_total", "Streams the server closed, by cause", ["cause"])
HOLES_OPEN = Gauge("medic_stream_holes", "Event ids below the tail's high-water mark not seen yet")
HOLES_SETTLED = Counter(
    "medic_stream_holes_given_up_total", "Holes given up without their event, by how", ["how"]
)  # rolled_back (snapshot xmin passed), timeout (ws_hole_wait_seconds), wide_gap (> MAX_HOLES)


@dataclass(frozen=True, slots=True)
class Update:
    """One transition as the stream sends it; `id` is the job_events id (the cursor)."""

    id: int
    job_id: uuid.UUID
    from_state: str | None
    to_state: str
    reason: str
    attempt: int
    at: dt.datetime
    tenant: str
    queue: str
    type: str

    @classmethod
    def from_row(cls, row: Any) -> Update:
        return cls(
            row.id, row.job_id, row.from_state, row.to_state, row.reason, row.attempt, row.at,
            row.tenant, row.queue, row.type,
        )  # fmt: skip

    def message(self, coalesced: int = 0) -> dict[str, Any]:
        return {
            "type": "transition",
            "job_id": str(self.job_id),
            "job_type": self.type,
            "queue": self.queue,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "reason": self.reason,
            "attempt": self.attempt,
            "at": self.at.isoformat(),
            "cursor": str(self.id),
            "coalesced": coalesced,
        }


class ClientQueue:
    """A bounded FIFO of updates for one client. When full, it keeps only the latest update of
    each job (order of the survivors kept, so cursors stay increasing); if that frees less than a
    tenth of it, the client has overflowed and must resume from its last cursor."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: collections.deque[tuple[Update, int]] = collections.deque()
        self.ready = asyncio.Event()
        self.overflowed = False

    def put(self, update: Update) -> bool:
        """False when the queue overflowed (the update is dropped; so is everything queued)."""
        if self.overflowed:
            return False
        if len(self.items) >= self.maxsize:
            self._coalesce()
            # Coalescing is O(queue): unless it freed a tenth of the room, give up now rather than
            # pay it again on every next update (a slow client must stay cheap for the tail).
            if len(self.items) > self.maxsize - max(1, self.maxsize // 10):
                self.overflowed = True
        if self.overflowed:
            self.items.clear()  # free the memory now: the client resumes from the ledger
            self.ready.set()
            return False
        self.items.append((update, 0))
        self.ready.set()
        return True

    def _coalesce(self) -> None:
        latest: dict[uuid.UUID, tuple[Update, int]] = {}
        for update, dropped in self.items:
            before = latest.pop(update.job_id, None)  # pop + insert: the survivor moves to its newest place
            latest[update.job_id] = (update, dropped + (before[1] + 1 if before else 0))
        self.items = collections.deque(latest.values())

    async def get(self) -> tuple[Update, int] | None:
        """The next update, or None once the queue has overflowed."""
        while not self.items and not self.overflowed:
            self.ready.clear()
            await self.ready.wait()
        if self.overflowed:
            return None
        return self.items.popleft()


@dataclass(eq=False)
class Subscriber:
    """One stream client: its tenant, filters, the cursor below which it wants nothing, its queue."""

    tenant: str
    key_id: uuid.UUID
    floor: int
    queue: ClientQueue
    job_ids: frozenset[uuid.UUID] = frozenset()
    queue_name: str | None = None
    job_type: str | None = None
    overflow: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, update: Update) -> bool:
        if update.id <= self.floor:
            return False
        if self.job_ids and update.job_id not in self.job_ids:
            return False
        if self.queue_name and update.queue != self.queue_name:
            return False
        return not (self.job_type and update.type != self.job_type)

    def offer(self, update: Update) -> None:
        if self.wants(update) and not self.queue.put(update):
            self.overflow.set()


class LimitError(Exception):
    """A connection over a limit: the WebSocket close code and reason to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class _Hole:
    seen_at: float
    xmax: int  # snapshot xmax when the hole was first seen (0: not PostgreSQL)


class Hub:
    """The process's tail of job_events and its subscribers."""

    def __init__(self) -> None:
        self.by_tenant: dict[str, set[Subscriber]] = {}
        self.per_key: collections.Counter[uuid.UUID] = collections.Counter()
        self.count = 0
        self.released = 0  # every id <= released was dispatched, or settled as never coming
        self.fetched = 0  # highest id fetched
        self.holes: dict[int, _Hole] = {}
        self.pending: dict[int, Update] = {}  # fetched, waiting behind a hole
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self.last_xmin = 0  # snapshot xmin of the latest tail read

    # --- subscribers ---------------------------------------------------------------------
    def add(self, sub: Subscriber) -> None:
        """Raises:
        LimitError: the process (1013) or the key (4429) is at its stream limit.
        """
        s = get_settings()
        if self.per_key[sub.key_id] >= s.ws_max_connections_per_key:
            raise LimitError(4429, f"this key holds {s.ws_max_connections_per_key} streams already")
        if self.count >= s.ws_max_connections:
            raise LimitError(1013, f"this API process serves {s.ws_max_connections} streams already; retry later")
        self.by_tenant.setdefault(sub.tenant, set()).add(sub)
        self.per_key[sub.key_id] += 1
        self.count += 1
        STREAMS.set(self.count)

    def remove(self, sub: Subscriber) -> None:
        subs = self.by_tenant.get(sub.tenant)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self.by_tenant[sub.tenant]
        self.per_key[sub.key_id] -= 1
        if self.per_key[sub.key_id] <= 0:
            del self.per_key[sub.key_id]
        self.count -= 1
        STREAMS.set(self.count)

    # --- the tail ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the tail once, at the ledger's current end (a client with `since` replays the rest)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="medic-stream-tail")
        await self._started.wait()

    async def _run(self) -> None:
        start_xmax = await self._start_point()
        since = time.monotonic()
        while True:
            full = False
            try:
                full = await self.poll_once()
            except Exception:
                log.warning("stream tail: poll failed; retrying", exc_info=True)
            # An id below the starting point may belong to a transaction still open: clients
            # (whose replay reads up to `released`) wait until every transaction running at the
            # start has ended, as for any hole.
            if not self._started.is_set() and (
                self.last_xmin >= start_xmax or time.monotonic() - since >= get_settings().ws_hole_wait_seconds
            ):
                self._started.set()
            if not full:
                await asyncio.sleep(0.02 if not self._started.is_set() else get_settings().ws_poll_seconds)

    async def _start_point(self) -> int:
        """Start at the ledger's end; return the snapshot xmax of that read (0: not PostgreSQL)."""
        while True:
            try:
                end, (_, xmax) = await asyncio.to_thread(_end)
            except Exception:  # the ledger is down: keep trying, clients wait
                log.warning("stream tail: cannot read the ledger's end yet", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            self.released = self.fetched = end
            return xmax

    async def poll_once(self) -> bool:
        """One tail read and release; True when the page was full (poll again at once)."""
        holes = sorted(self.holes)[:TAIL_PAGE]
        rows, (xmin, xmax) = await asyncio.to_thread(_fetch, self.fetched, holes)
        self.last_xmin = xmin
        ready = self.absorb([Update.from_row(r) for r in rows], xmin, xmax, time.monotonic())
        for i, update in enumerate(ready, 1):
            self._dispatch(update)
            if i % DISPATCH_CHUNK == 0:
                # Let the writers run: a page (1,000 events) dispatched in one go would fill the
                # queue of a client that keeps up perfectly well, since no writer runs meanwhile.
                await asyncio.sleep(0)
        return len(rows) >= TAIL_PAGE

    def absorb(self, updates: list[Update], xmin: int, xmax: int, now: float) -> list[Update]:
        """Take one fetch (read under one snapshot with `xmin`/`xmax`); return what can be
        released, in id order."""
        for update in updates:
            if update.id in self.holes:
                del self.holes[update.id]
            elif update.id > self.fetched:
                gap = range(self.fetched + 1, update.id)
                if len(self.holes) + len(gap) > MAX_HOLES:
                    log.warning("stream tail: %d-id gap before %d settled at once", len(gap), update.id)
                    HOLES_SETTLED.labels("wide_gap").inc(len(gap))
                else:
                    self.holes.update((h, _Hole(now, xmax)) for h in gap)
                self.fetched = update.id
            elif update.id <= self.released:
                continue  # a hole given up earlier has committed after all; replay will show it
            self.pending[update.id] = update
        ready = self._release(xmin, now)
        HOLES_OPEN.set(len(self.holes))
        return ready

    def _settled(self, hole: _Hole, xmin: int, now: float) -> bool:
        age = now - hole.seen_at
        if age >= get_settings().ws_hole_wait_seconds:
            HOLES_SETTLED.labels("timeout").inc()
            return True
        # Every transaction running when the hole was seen has ended (and this very fetch, under
        # the same snapshot, did not see the id): it rolled back. See the module docstring.
        if hole.xmax > 0 and xmin >= hole.xmax and age >= HOLE_MIN_AGE_S:
            HOLES_SETTLED.labels("rolled_back").inc()
            return True
        return False

    def _release(self, xmin: int, now: float) -> list[Update]:
        """Pending updates in id order up to the lowest hole still open. Ids in neither map are
        gaps settled at once (wider than MAX_HOLES): walked over by the sort, never one by one."""
        ready: list[Update] = []
        for id_ in sorted(self.pending.keys() | self.holes.keys()):
            hole = self.holes.get(id_)
            if hole is not None:
                if not self._settled(hole, xmin, now):
                    self.released = id_ - 1
                    return ready
                del self.holes[id_]
            else:
                ready.append(self.pending.pop(id_))
        self.released = self.fetched
        return ready

    def _dispatch(self, update: Update) -> None:
        # put() never blocks: a slow client only ever fills its own bounded queue
        for sub in tuple(self.by_tenant.get(update.tenant, ())):
            sub.offer(update)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _one_snapshot(read: Callable[[Connection], T]) -> tuple[T, tuple[int, int]]:
    """`read` and the snapshot horizon under ONE snapshot (REPEATABLE READ), so "xmin has passed
    the hole's xmax and this read did not see it" means the hole's transaction rolled back."""
    with db.snapshot() as conn:
        horizon = queries.snapshot_horizon(conn)
        return read(conn), horizon


def _end() -> tuple[int, tuple[int, int]]:
    return _one_snapshot(queries.max_event_id)


def _fetch(after: int, holes: list[int]) -> tuple[list[Any], tuple[int, int]]:
    return _one_snapshot(lambda conn: queries.stream_tail(conn, after, holes, TAIL_PAGE))


_hub: Hub | None = None


def get_hub() -> Hub:
    """This process's hub (uvicorn runs one event loop per process)."""
    global _hub
    if _hub is None:
        _hub = Hub()
    return _hub
