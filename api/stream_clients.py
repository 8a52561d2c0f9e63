"""What one `WS /jobs/stream` client is sent and holds: the transition and resync messages, its
bounded queue, its filters. The tail that feeds them is `api/stream_hub.py`."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any


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
    detail: str | None = None
    workflow_id: uuid.UUID | None = None  # a workflow's step: its workflow and step name
    step: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Update:
        return cls(
            row.id, row.job_id, row.from_state, row.to_state, row.reason, row.attempt, row.at,
            row.tenant, row.queue, row.type, row.detail, row.workflow_id, row.step,
        )  # fmt: skip

    def message(self, coalesced: int = 0) -> dict[str, Any]:
        message = {
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
            "detail": self.detail,  # a progress event's {"fraction", "message"}, as JSON
        }
        if self.workflow_id is not None:  # only on a workflow's steps: a plain job's message is unchanged
            message.update(workflow_id=str(self.workflow_id), step=self.step)
        return message


@dataclass(frozen=True, slots=True, eq=False)
class Resync:
    """Ids lo..hi this stream went past without their events: `committed=False`, their
    transaction was still open after ws_hole_wait_seconds (they may commit later);
    `committed=True`, events there committed after that (replay them). `id`: the stream's
    position after it. Never coalesced (eq=False: each is its own key)."""

    lo: int
    hi: int
    id: int
    committed: bool

    def message(self, coalesced: int = 0) -> dict[str, Any]:
        return {
            "type": "resync",
            "from": str(self.lo),
            "to": str(self.hi),
            "state": "committed" if self.committed else "open",
            "cursor": str(self.id),
        }


class ClientQueue:
    """A bounded FIFO of updates for one client. When full, it keeps only the latest update of
    each job (order of the survivors kept, so cursors stay increasing); if that frees less than a
    tenth of it, the client has overflowed and must resume from its last cursor."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: collections.deque[tuple[Update | Resync, int]] = collections.deque()
        self.ready = asyncio.Event()
        self.overflowed = False

    def put(self, update: Update | Resync) -> bool:
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
        latest: dict[object, tuple[Update | Resync, int]] = {}
        for update, dropped in self.items:
            key = update.job_id if isinstance(update, Update) else update
            before = latest.pop(key, None)  # pop + insert: the survivor moves to its newest place
            latest[key] = (update, dropped + (before[1] + 1 if before else 0))
        self.items = collections.deque(latest.values())

    async def get(self) -> tuple[Update | Resync, int] | None:
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
        return update.id > self.floor and self.matches(update)

    def matches(self, update: Update) -> bool:
        """The client's filters, whatever the cursor."""
        if self.job_ids and update.job_id not in self.job_ids:
            return False
        if self.queue_name and update.queue != self.queue_name:
            return False
        return not (self.job_type and update.type != self.job_type)

    def offer(self, update: Update) -> None:
        if self.wants(update) and not self.queue.put(update):
            self.overflow.set()

    def notify(self, resync: Resync) -> None:
        if not self.queue.put(resync):
            self.overflow.set()
