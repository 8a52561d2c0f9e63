"""Group commit: concurrent single-job submissions of one process share one transaction.

Each request is validated and admitted in its own thread (4xx and 429 never reach a group), then
hands its job to this process's committer and waits. One committer thread takes the first row
waiting, gathers what else is waiting (and, while requests arrive together, waits at most
`submit_group_wait_ms` or until `submit_group_max_rows`), commits them in ONE transaction, sends
their messages in ONE Redis pipeline, and only then answers each caller: a 202 still means
committed. PostgreSQL pays one WAL flush per group instead of one per job.

A row that the ledger refuses would fail the whole transaction; the group is then committed row
by row, so only that row's caller gets the error. The waiting queue is bounded: when it is full
the request is refused at once with the same 503 as the in-flight limit.

Nothing one caller does may hold the others: a job with an idempotency key never joins a group
(its insert may wait for another transaction holding the same key, or cross another group's keys)
and is committed in its caller's thread; and every wait is bounded. A caller that waits more than
`submit_commit_timeout_seconds` withdraws its row if the committer has not taken it yet (503
commit_unconfirmed, nothing written); if it has, the caller settles the row itself
(worker.accept.commit `settle`: read back if the committer's transaction wrote it, else written
now) rather than answer for a row whose fate it does not know.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import exc as sa_exc

from worker.accept.commit import Accepted, Committed, commit, publish_new, settle
from worker.background import BackgroundThread
from worker.errors import CommitUnconfirmedError, LedgerUnavailableError, MedicError, OverloadedError
from worker.forksafe import PerProcess
from worker.ledger.records import NewJob
from worker.settings import get_settings

log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    """One caller's job, and where its outcome is handed back."""

    job: NewJob
    actor: str
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Committed | BaseException | None = None
    state: Literal["waiting", "taken", "withdrawn"] = "waiting"  # changed under the committer's lock

    def answer(self, outcome: Committed | BaseException) -> None:
        self.outcome = outcome
        self.done.set()


class GroupCommitter:
    """The committer thread of one process and its bounded queue of waiting rows."""

    def __init__(self, wait_s: float, max_rows: int, bound: int, timeout_s: float = 10.0) -> None:
        self.wait_s = wait_s
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        self._queue: queue.Queue[_Waiting] = queue.Queue(maxsize=bound)
        self._lock = threading.Lock()
        self._last_group = 1
        self._thread = BackgroundThread("medic-group-commit", self._commit_next, every_s=0, logger=log).start()

    def submit(self, job: NewJob, actor: str) -> Accepted:
        """Commit `job` with whatever else is waiting; returns once it is committed (and sent).

        Raises:
            OverloadedError: too many rows already wait (503, Retry-After 1).
            CommitUnconfirmedError: not committed within `timeout_s` (see the module's docstring).
            IdempotencyConflictError, LedgerUnavailableError, ...: this row's own outcome.
        """
        if job.idempotency_key is not None:  # apart: its insert may wait on another transaction
            return _answer(publish_new(commit([job], [actor]))[0])
        waiting = _Waiting(job, actor)
        try:
            self._queue.put_nowait(waiting)
        except queue.Full:
            raise OverloadedError(
                f"more than {self._queue.maxsize} submissions are waiting to be committed", retry_after=1
            ) from None
        if not waiting.done.wait(self.timeout_s):
            return self._late(waiting)
        return _answer(waiting.outcome)

    def _late(self, waiting: _Waiting) -> Accepted:
        """The group has not answered in time: withdraw the row if it is not taken yet, else
        settle it here (the committer's transaction may be stuck holding it).

        Raises:
            CommitUnconfirmedError: withdrawn ("not_written"), or settling failed ("unknown").
        """
        with self._lock:
            if waiting.state == "waiting":
                waiting.state = "withdrawn"
                raise CommitUnconfirmedError(
                    f"not committed within {self.timeout_s:g} s; nothing written",
                    outcome="not_written",
                    job_ids=[str(waiting.job.id)],
                )
        if waiting.done.is_set():
            return _answer(waiting.outcome)
        log.warning("group commit has not answered job %s in %.1f s; settling it", waiting.job.id, self.timeout_s)
        return _answer(publish_new(settle([waiting.job], [waiting.actor]))[0])

    def _gather(self) -> list[_Waiting]:
        """The first row waiting, then what else is waiting. Wait for more only when the last
        group had company: a lone request is never held back."""
        group = [self._queue.get()]
        deadline = time.monotonic() + (self.wait_s if self._last_group > 1 else 0.0)
        while len(group) < self.max_rows:
            try:
                group.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                group.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        self._last_group = len(group)
        return group

    def _commit_next(self) -> None:
        """One group: gathered, committed, answered. Whatever escapes `_commit` still answers
        every caller of the group that has no answer yet, then goes to the thread's log."""
        group = self._take(self._gather())
        if not group:
            return
        try:
            self._commit(group)
        except BaseException as exc:
            for waiting in group:
                if not waiting.done.is_set():
                    waiting.answer(exc)
            raise

    def _take(self, group: list[_Waiting]) -> list[_Waiting]:
        """The rows of `group` whose callers still wait; from now on theirs to settle if late."""
        with self._lock:
            taken = [w for w in group if w.state == "waiting"]
            for waiting in taken:
                waiting.state = "taken"
        return taken

    def _commit(self, group: list[_Waiting]) -> None:
        news, actors = [w.job for w in group], [w.actor for w in group]
        done: list[Committed | BaseException]
        try:
            done = list(commit(news, actors, separate=True))
        except LedgerUnavailableError as exc:  # nothing committed, for anyone: each gets the 503
            for waiting in group:
                waiting.answer(exc)
            return
        except (sa_exc.SQLAlchemyError, MedicError) as exc:
            if len(group) == 1:
                group[0].answer(exc)
                return
            # One row the ledger refused failed them all: commit each alone, so only it fails.
            log.warning("group of %d failed (%s); committing its rows one by one", len(group), exc)
            done = [self._alone(w) for w in group]
        sent = publish_new([d for d in done if isinstance(d, Accepted)])
        answers = iter(sent)
        for waiting, outcome in zip(group, done, strict=True):
            waiting.answer(outcome if isinstance(outcome, BaseException) else next(answers))

    @staticmethod
    def _alone(waiting: _Waiting) -> Committed | BaseException:
        try:
            return commit([waiting.job], [waiting.actor], separate=True)[0]
        except (sa_exc.SQLAlchemyError, MedicError) as exc:
            return exc


def _answer(outcome: Committed | BaseException | None) -> Accepted:
    if isinstance(outcome, BaseException):
        raise outcome
    assert isinstance(outcome, Accepted)
    return outcome


def _make(_: str) -> GroupCommitter:
    s = get_settings()
    return GroupCommitter(
        s.submit_group_wait_ms / 1000, s.submit_group_max_rows, s.submit_group_queue, s.submit_commit_timeout_seconds
    )


# One committer per process: a forked uvicorn worker starts its own thread (worker.forksafe).
_committer: PerProcess[str, GroupCommitter] = PerProcess(_make)


def get_committer() -> GroupCommitter:
    return _committer.get("jobs")
