"""One tail of `job_events` per API process, fanned out to every `WS /jobs/stream` client.

The ledger's `job_events` table is already the durable, ordered record of every transition, and
its BIGSERIAL id is the stream's cursor: no change to the write path, and a resume is a range
read. One task per process polls `WHERE id > :last OR id BETWEEN :lo AND :hi ... ORDER BY id
LIMIT n` (one query per process, whatever the number of clients) and hands each event to the
subscribers of its tenant, each with its own bounded queue.

The race this module exists for: a sequence id is taken at INSERT, not at COMMIT, so id 10 can
become visible after id 11. A tail at `last = 11` would skip 10 for ever. Every id below the
high-water mark that has not been seen is a *hole* (kept as ranges: `api/stream_holes.py`, which
also says when a hole is known to have rolled back). Events are released strictly in id order, so
a release stops at the lowest open hole until it fills (its transaction commits) or is known never
to come. In-order release is what makes the cursor a plain number: a client that saw cursor C has
seen, or will never need, everything at or below C.

Never silently: a hole still open after `ws_hole_wait_seconds` is passed with a `resync` message
naming its range to every client, and is watched on; its events, if they commit later, are named
to their clients by a second `resync` (docs/api.md "Live updates").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge
from sqlalchemy.engine import Connection

from api.stream_clients import ClientQueue, Resync, Subscriber, Update
from api.stream_holes import Gap, Holes
from worker.ledger import db, queries
from worker.settings import get_settings

__all__ = ["STREAM_CLOSED", "ClientQueue", "Hub", "LimitError", "Resync", "Subscriber", "Update", "get_hub"]

log = logging.getLogger(__name__)
T = TypeVar("T")

TAIL_PAGE = 1000
QUERY_HOLES = 64  # hole ranges one tail read re-reads (the lowest: the release waits on those)
QUERY_LATE = 16  # ranges passed with a resync, re-read for their late events
DISPATCH_CHUNK = 50  # updates dispatched between two yields to the writers
MAX_PENDING = 20_000  # events held behind an open hole; past it the tail reads only the holes
START_WINDOW = 100_000  # ids below the starting point checked for gaps an open transaction may fill
START_GAPS = 10_000  # at most this many of those gaps (the newest) are watched
START_WAIT_S = 10.0  # clients wait this long at most for the transactions open at the start


STREAMS = Gauge("medic_stream_connections", "WS /jobs/stream clients subscribed to this API process")
STREAM_CLOSED = Counter("medic_stream_closed_total", "Streams the server closed, by cause", ["cause"])
HOLES_OPEN = Gauge("medic_stream_holes", "Event ids below the tail's high-water mark not seen yet")
HOLES_SETTLED = Counter(
    "medic_stream_holes_given_up_total", "Holes given up without their event, by how", ["how"]
)  # rolled_back (a covering read under a later snapshot), resync (ws_hole_wait_seconds, clients told)


class LimitError(Exception):
    """A connection over a limit: the WebSocket close code and reason to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Fetch:
    """What one tail read asks for: ids past `after` (None: none, too much is held back), and
    the hole ranges it re-reads."""

    after: int | None
    holes: list[tuple[int, int]]
    late: list[tuple[int, int]]
    limit: int = TAIL_PAGE

    def covered_upto(self, rows: int, last_id: int) -> int | None:
        """The highest id this read covered: with a full page, only up to its last row (None: all)."""
        return last_id if rows >= self.limit else None


class Hub:
    """The process's tail of job_events and its subscribers."""

    def __init__(self) -> None:
        self.by_tenant: dict[str, set[Subscriber]] = {}
        self.per_key: collections.Counter[uuid.UUID] = collections.Counter()
        self.count = 0
        self.released = 0  # every id <= released was dispatched, settled, or named in a resync
        self.fetched = 0  # highest id fetched
        self.holes = Holes()  # waited for: the release stops at the lowest
        self.late = Holes()  # passed with a resync: watched until they commit (resync again) or end
        self.pending: dict[int, Update] = {}  # fetched, waiting behind a hole
        self._pending_ids: list[int] = []  # a heap of pending's keys
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
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

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn` on the tail's own thread: replays and key checks use the default pool, and a
        burst of them must not hold back every client's live events."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="medic-stream-tail")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _run(self) -> None:
        start_xmax = await self._start_point()
        since = time.monotonic()
        while True:
            full = False
            try:
                full = await self.poll_once()
            except Exception:
                log.warning("stream tail: poll failed; retrying", exc_info=True)
            # Clients (whose replay reads up to `released`) wait, START_WAIT_S at most, until every
            # transaction running at the start has ended: then an id below it is final.
            if not self._started.is_set() and (
                self.last_xmin >= start_xmax or time.monotonic() - since >= START_WAIT_S
            ):
                self._started.set()
            if not full:
                await asyncio.sleep(0.02 if not self._started.is_set() else get_settings().ws_poll_seconds)

    async def _start_point(self) -> int:
        """Start at the ledger's end; return the snapshot xmax of that read (0: not PostgreSQL).
        An id below the end may belong to a transaction still open past START_WAIT_S: the gaps
        among the last START_WINDOW ids are watched as if passed with a resync, so a late commit
        there is named to its clients."""
        while True:
            try:
                end, gaps, xmax = await self._read(_start)
            except Exception:  # the ledger is down: keep trying, clients wait
                log.warning("stream tail: cannot read the ledger's end yet", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            now = time.monotonic()
            for lo, hi in gaps:
                self.late.add(Gap(lo, hi, now, origin=lo))
            self.released = self.fetched = end
            return xmax

    def plan(self) -> Fetch:
        """The next read: past `fetched`, and the lowest hole ranges (a bounded number of each)."""
        after = self.fetched if len(self.pending) < MAX_PENDING else None
        return Fetch(after, self.holes.lowest(QUERY_HOLES), self.late.lowest(QUERY_LATE))

    async def poll_once(self) -> bool:
        """One tail read and release; True when the page was full (poll again at once)."""
        fetch = self.plan()
        rows, (xmin, xmax) = await self._read(_fetch, fetch)
        self.last_xmin = xmin
        ready, late = self.absorb(fetch, [Update.from_row(r) for r in rows], xmin, xmax, time.monotonic())
        for i, item in enumerate(ready, 1):
            self._dispatch(item)
            if i % DISPATCH_CHUNK == 0:
                # Let the writers run: a page (1,000 events) dispatched in one go would fill the
                # queue of a client that keeps up perfectly well, since no writer runs meanwhile.
                await asyncio.sleep(0)
        self._dispatch_late(late)
        return len(rows) >= fetch.limit

    def absorb(
        self, fetch: Fetch, updates: list[Update], xmin: int, xmax: int, now: float
    ) -> tuple[list[Update | Resync], dict[int, list[Update]]]:
        """Take one read (`updates`, in id order, under one snapshot with `xmin`/`xmax`): return
        what can be released, in id order, and the events of ranges already passed with a resync
        (by the range they were passed in) that have committed since."""
        late: dict[int, list[Update]] = {}
        for update in updates:
            if update.id > self.fetched:
                if update.id > self.fetched + 1:
                    self.holes.add(Gap(self.fetched + 1, update.id - 1, now))
                self.fetched = update.id
            elif self.holes.take(update.id) is None:
                passed = self.late.take(update.id)
                if passed is not None:
                    late.setdefault(passed.origin, []).append(update)
                else:  # the read asks only for holes and ids past `fetched`: a settling bug
                    log.warning("stream tail: id %d was given up as rolled back yet committed", update.id)
                continue
            heapq.heappush(self._pending_ids, update.id)
            self.pending[update.id] = update
        covered = fetch.covered_upto(len(updates), updates[-1].id if updates else 0)
        settled = self.holes.settle(fetch.holes, covered, xmin, xmax, now)
        settled += self.late.settle(fetch.late, covered, xmin, xmax, now)
        HOLES_SETTLED.labels("rolled_back").inc(settled)
        ready = self._release(now)
        HOLES_OPEN.set(self.holes.ids + self.late.ids)
        return ready, late

    def _release(self, now: float) -> list[Update | Resync]:
        """Pending updates in id order up to the lowest hole still open. A hole open longer than
        `ws_hole_wait_seconds` is passed, and every client told so by a resync in its place."""
        ready: list[Update | Resync] = []
        wait_s = get_settings().ws_hole_wait_seconds
        while True:
            gap = self.holes.first()
            stop = gap.lo if gap is not None else self.fetched + 1
            while self._pending_ids and self._pending_ids[0] < stop:
                ready.append(self.pending.pop(heapq.heappop(self._pending_ids)))
            if gap is None:
                self.released = self.fetched
                return ready
            if now - gap.seen_at < wait_s:
                self.released = gap.lo - 1
                return ready
            gap.origin = gap.lo
            self.late.add(self.holes.pop_first())
            HOLES_SETTLED.labels("resync").inc(gap.size)
            log.warning("stream tail: ids %d..%d still uncommitted after %.0f s: passed, resync sent",
                        gap.lo, gap.hi, wait_s)  # fmt: skip
            ready.append(Resync(gap.lo, gap.hi, gap.hi, committed=False))

    def _dispatch(self, item: Update | Resync) -> None:
        # put() never blocks: a slow client only ever fills its own bounded queue
        if isinstance(item, Update):
            for sub in tuple(self.by_tenant.get(item.tenant, ())):
                sub.offer(item)
        else:  # whose ids these are is not known until they commit: every client is told
            for subs in tuple(self.by_tenant.values()):
                for sub in tuple(subs):
                    sub.notify(item)

    def _dispatch_late(self, late: dict[int, list[Update]]) -> None:
        """Tell the clients each late event concerns which ids to replay (one message a range)."""
        for updates in late.values():
            log.warning("stream tail: %d events committed after their range was passed: resync sent", len(updates))
            for sub in {s for u in updates for s in self.by_tenant.get(u.tenant, ())}:
                mine = [u.id for u in updates if sub.matches(u)]
                if mine:
                    sub.notify(Resync(mine[0], mine[-1], self.released, committed=True))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _one_snapshot(read: Callable[[Connection], T]) -> tuple[T, tuple[int, int]]:
    """`read` and the snapshot horizon under ONE snapshot (REPEATABLE READ), so "xmin has passed
    the hole's xmax and this read did not see it" means the hole's transaction rolled back."""
    with db.snapshot() as conn:
        horizon = queries.snapshot_horizon(conn)
        return read(conn), horizon


def _start() -> tuple[int, list[tuple[int, int]], int]:
    """The ledger's last event id, the newest gaps among the START_WINDOW ids below it, and the
    snapshot's xmax, under one snapshot."""
    with db.snapshot() as conn:
        _, xmax = queries.snapshot_horizon(conn)
        end = queries.max_event_id(conn)
        return end, queries.event_gaps(conn, max(0, end - START_WINDOW), end, START_GAPS), xmax


def _fetch(fetch: Fetch) -> tuple[list[Any], tuple[int, int]]:
    spans = fetch.holes + fetch.late
    return _one_snapshot(lambda conn: queries.stream_tail(conn, fetch.after, spans, fetch.limit))


_hub: Hub | None = None


def get_hub() -> Hub:
    """This process's hub (uvicorn runs one event loop per process)."""
    global _hub
    if _hub is None:
        _hub = Hub()
    return _hub
