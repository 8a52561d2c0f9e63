"""Group commit: concurrent single-job submissions of one process share one transaction.

Each request is validated and admitted in its own thread (4xx and 429 never reach a group), then
hands its job to this process's committer and waits. One committer thread takes the first row
waiting, gathers what else is waiting (and, while requests arrive together, waits at most
`submit_group_wait_ms` or until `submit_group_max_rows`), commits them in ONE transaction, sends
their messages in ONE Redis pipeline, and only then answers each caller: a 202 still means
committed. PostgreSQL pays one WAL flush per group instead of one per job.

A row that the ledger refuses would fail the whole transaction; the group is then committed row
by row, so only that row's caller gets the error. A caller whose idempotency key was used for a
different job gets its 409 alone (worker.accept.commit, `separate`). The waiting queue is
bounded: when it is full the request is refused at once with the same 503 as the in-flight limit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import exc as sa_exc

from worker.accept.commit import Accepted, Committed, commit, publish_new
from worker.background import BackgroundThread
from worker.errors import LedgerUnavailableError, MedicError, OverloadedError
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

    def answer(self, outcome: Committed | BaseException) -> None:
        self.outcome = outcome
        self.done.set()


class GroupCommitter:
    """The committer thread of one process and its bounded queue of waiting rows."""

    def __init__(self, wait_s: float, max_rows: int, bound: int) -> None:
        self.wait_s = wait_s
        self.max_rows = max_rows
        self._queue: queue.Queue[_Waiting] = queue.Queue(maxsize=bound)
        self._last_group = 1
        self._thread = BackgroundThread("medic-group-commit", self._commit_next, every_s=0, logger=log).start()

    def submit(self, job: NewJob, actor: str) -> Accepted:
        """Commit `job` with whatever else is waiting; returns once it is committed (and sent).

        Raises:
            OverloadedError: too many rows already wait (503, Retry-After 1).
            IdempotencyConflictError, LedgerUnavailableError, ...: this row's own outcome.
        """
        waiting = _Waiting(job, actor)
        try:
            self._queue.put_nowait(waiting)
        except queue.Full:
            raise OverloadedError(
                f"more than {self._queue.maxsize} submissions are waiting to be committed", retry_after=1
            ) from None
        waiting.done.wait()
        outcome = waiting.outcome
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, Accepted)
        return outcome

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
        group = self._gather()
        try:
            self._commit(group)
        except BaseException as exc:
            for waiting in group:
                if not waiting.done.is_set():
                    waiting.answer(exc)
            raise

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


def _make(_: str) -> GroupCommitter:
    s = get_settings()
    return GroupCommitter(s.submit_group_wait_ms / 1000, s.submit_group_max_rows, s.submit_group_queue)


# One committer per process: a forked uvicorn worker starts its own thread (worker.forksafe).
_committer: PerProcess[str, GroupCommitter] = PerProcess(_make)


def get_committer() -> GroupCommitter:
    return _committer.get("jobs")
