"""One heartbeat thread per worker process: it extends the leases of every job the process runs
in one statement, and keeps the process's presence key alive in Redis: this incarnation (a random
id per process start) and the deliveries it holds.

Started lazily on the first job a process runs, so it works the same in a prefork child, a solo
worker or a test; a forked child never inherits its parent's thread (the pid is checked).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import Counter

from worker.background import BackgroundThread
from worker.broker import presence
from worker.broker.counters import record_drained
from worker.clock import utcnow
from worker.errors import LedgerUnavailableError
from worker.forksafe import PerProcess
from worker.ledger import db, transitions
from worker.runtime import current, fencing
from worker.settings import get_settings

log = logging.getLogger(__name__)


class Heartbeat:
    """Leases of the jobs one process holds, kept alive while they run."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.pid = os.getpid()
        # Made per process (PerProcess below): a restarted container may reuse hostname and pid,
        # never this id, so its presence cannot vouch for the jobs of the process it replaced.
        self.incarnation = uuid.uuid4().hex
        self._held: dict[uuid.UUID, uuid.UUID] = {}
        self._drained: Counter[str] = Counter()
        self._lock = threading.Lock()
        # The first beat at once (presence before the first lease is due), then every interval.
        self._thread = BackgroundThread(
            "medic-heartbeat", self.beat, every_s=get_settings().heartbeat_seconds, logger=log
        ).start()

    def track(self, job_id: uuid.UUID, delivery_id: uuid.UUID, queue: str) -> None:
        """Hold a job's lease. No Redis call here: presence and the drain count go out with the
        next beat, so starting a job costs no round trip of its own."""
        with self._lock:
            self._held[job_id] = delivery_id
            self._drained[queue] += 1

    def untrack(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._held.pop(job_id, None)

    def held(self) -> dict[uuid.UUID, uuid.UUID]:
        with self._lock:
            return dict(self._held)

    def announce(self, held: dict[uuid.UUID, uuid.UUID] | None = None) -> None:
        """Refresh this process's presence (incarnation and held deliveries) in one round trip;
        a Redis outage is logged, never fatal."""
        deliveries = (self.held() if held is None else held).values()
        try:
            presence.announce(
                self.worker, self.pid, incarnation=self.incarnation, held=deliveries,
                ttl_s=get_settings().presence_ttl_seconds,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - presence is best effort; the lease is the truth
            log.warning("presence refresh failed: %s", exc)

    def beat(self) -> int:
        """Extend every held lease now; returns how many rows were extended."""
        held = self.held()
        # The same snapshot goes to presence and to the lease extension: a job is in the presence
        # whenever its lease is pushed forward (recover_stuck relies on it).
        self.announce(held)
        with self._lock:
            drained, self._drained = self._drained, Counter()
        record_drained(drained)
        if not held:
            return 0
        s = get_settings()
        sent_at = fencing.clock()  # before the statement: the ledger's lease ends no earlier
        try:
            # Committed synchronously: the fence trusts an extension the moment it returns, so a
            # PostgreSQL crash must not be able to take it back (the lease would then end in the
            # ledger before the worker thinks it does).
            renewal = db.write(
                lambda conn: transitions.extend_leases(conn, held, now=utcnow(), lease_s=s.lease_seconds)
            )
        except LedgerUnavailableError as exc:
            log.warning("lease extension failed (ledger down?): %s", exc)
            return 0
        fence = fencing.peek_fence()
        if fence is not None:
            fence.confirm(held, renewal.extended, sent_at=sent_at, lease_s=s.lease_seconds)
        # The cancel requests of the jobs held, from the ledger: a lost broadcast loses nothing.
        for job_id in current.mark_cancel_requested(renewal.cancel_requested):
            log.warning("job %s: cancel requested; it may run %g s more", job_id, s.cancel_grace_seconds)
            if fence is not None:
                fence.stop_within(job_id, s.cancel_grace_seconds)
        self.write_progress({j: d for j, d in held.items() if j in renewal.extended})
        return len(renewal.extended)

    def write_progress(self, held: dict[uuid.UUID, uuid.UUID]) -> None:
        """The latest unsent progress of each held job, in one transaction: at most one write per
        job per beat (and one when its body ends), however often the job reported. A write the
        ledger could not take is sent with the next beat; progress never fails a job."""
        reports = current.take_progress(held)
        if not reports:
            return
        actor = f"{self.worker}:{self.pid}"
        try:
            with db.begin() as conn:
                transitions.report_progress(conn, reports, actor=actor, now=utcnow())
        except LedgerUnavailableError as exc:
            current.unsend(reports)
            log.warning("progress write failed (ledger down?): %s", exc)
        except Exception:  # a report the ledger refuses is dropped, never fatal to the job
            log.exception("progress write of %d job(s) failed; dropped", len(reports))

    def wake(self) -> None:
        """Beat now (a cancel broadcast arrived): the ledger, not the broadcast, says what to stop."""
        self._thread.wake()

    def stop(self) -> None:
        self._thread.stop()


_heartbeat: PerProcess[str, Heartbeat] = PerProcess(Heartbeat, close=Heartbeat.stop)
_latest: tuple[int, Heartbeat] | None = None  # (pid, heartbeat) for wake_now(), read without a lock


def wake_now() -> None:
    """Make this process's heartbeat beat now, if it has one. Takes no lock, so a signal handler
    may call it: the thread it interrupted may hold any lock (PerProcess's among them)."""
    latest = _latest
    if latest is not None and latest[0] == os.getpid():
        latest[1].wake()


def get_heartbeat(worker: str) -> Heartbeat:
    """This process's heartbeat, started on first use (a forked child starts its own)."""
    global _latest
    heartbeat = _heartbeat.get(worker)
    _latest = (heartbeat.pid, heartbeat)
    return heartbeat
