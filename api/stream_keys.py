"""Open streams' keys, re-read from the ledger every `api_key_cache_seconds`: a key revoked
while its streams are open closes them (4401) within that period plus one ledger read.

A stream's key is checked at connect, possibly from the process's KeyCache; the re-check reads
the ledger itself (one query per process per period for every open stream's key, whatever the
number of streams), so a cached entry never delays it. A key it finds revoked is also dropped
from the cache, so the client's reconnect is refused at once rather than served from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from api import deps
from worker.ledger import apikeys, db
from worker.settings import get_settings

log = logging.getLogger(__name__)

MIN_PERIOD_S = 1.0  # api_key_cache_seconds may be 0 (HTTP re-reads every request); streams not that often


def period() -> float:
    """Seconds between two re-checks: the documented bound on a revoked key's open stream."""
    return max(get_settings().api_key_cache_seconds, MIN_PERIOD_S)


def _live(ids: set[uuid.UUID]) -> set[uuid.UUID]:
    with db.connect() as conn:
        return apikeys.live_ids(conn, ids)


class KeyWatch:
    """This process's open streams by key id, each with an event set when its key is revoked."""

    def __init__(self) -> None:
        self.streams: dict[uuid.UUID, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, key_id: uuid.UUID) -> asyncio.Event:
        """The event set once `key_id` is found revoked; pair with `unwatch`."""
        revoked = asyncio.Event()
        self.streams.setdefault(key_id, set()).add(revoked)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="medic-stream-keys")
        return revoked

    def unwatch(self, key_id: uuid.UUID, revoked: asyncio.Event) -> None:
        events = self.streams.get(key_id)
        if events is not None:
            events.discard(revoked)
            if not events:
                del self.streams[key_id]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(period())
            try:
                await self.check_once()
            except Exception:  # the ledger is away: keep the streams, look again next period
                log.warning("stream keys: re-check failed; streams kept until the next one", exc_info=True)

    async def check_once(self) -> set[uuid.UUID]:
        """Read every watched key once; signal the streams of those revoked (and return them)."""
        ids = set(self.streams)
        if not ids:
            return set()
        revoked = ids - await asyncio.to_thread(_live, ids)
        for key_id in revoked:
            deps.CACHE.forget(key_id)
            for event in self.streams.get(key_id, ()):
                event.set()
        return revoked

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


_watch: KeyWatch | None = None


def get_watch() -> KeyWatch:
    """This process's watch (uvicorn runs one event loop per process)."""
    global _watch
    if _watch is None:
        _watch = KeyWatch()
    return _watch
