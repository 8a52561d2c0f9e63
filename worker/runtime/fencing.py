"""Self-fencing: a process never runs a job past the lease it can prove it holds.

The ledger gives a running job away (recover_stuck) only once its lease has expired by more than
MEDIC_LEASE_MARGIN_SECONDS. So the process that runs it keeps, per job, the latest moment it
KNOWS the ledger still has the lease: the local time taken just before the claim or the last
lease extension that said "extended" was sent, plus the lease. Past that moment (its deadline)
the job is stopped at once, whatever the reason: the ledger is unreachable, the heartbeat hangs,
or the whole process was paused (SIGSTOP, a GC stall, a frozen VM) and has just resumed.

Three guards, each for what the others cannot see:

- a watchdog thread in the process that runs the job: past the deadline, or as soon as a renewal
  says "not extended" (the job was taken away), it SIGKILLs its own process (a prefork child);
- the worker's main process reads every child's deadline from a small file (one packed double,
  written with pwrite) and SIGKILLs a child past it: a stopped child cannot fence itself, and
  SIGKILL works on a stopped process;
- `still_owner()`, a cheap check (no round trip) a job calls before an external side effect, and
  `fencing_token()` (job, delivery, attempt) to hand to a system that can reject stale writers.

The clock is CLOCK_BOOTTIME where it exists: it keeps counting while the machine is suspended,
so a host that resumes from a freeze sees its deadlines passed. The honest limit: a resumed
process runs a few instructions before any thread notices; docs/guarantees.md says how long.

Only a prefork child kills itself. In a threads or solo pool (and the embedded test worker) the
process runs other jobs too: a lost job is marked, `still_owner()` says False, and the error is
logged; the main-process guard does not apply there.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import shutil
import signal
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from worker.background import BackgroundThread
from worker.forksafe import PerProcess

log = logging.getLogger(__name__)

CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
CHECK_EVERY_S = 0.05  # how often each guard looks; well inside the default margin (0.5 s)
_DEADLINE = struct.Struct("d")


def clock() -> float:
    """Seconds on the fencing clock (counts through suspend and SIGSTOP alike)."""
    return time.clock_gettime(CLOCK)


@dataclass(frozen=True)
class FencingToken:
    """What identifies one execution: a write carrying an older token than the newest one seen
    for the job is stale (attempt grows with every claim; the delivery id is unique per send)."""

    job_id: uuid.UUID
    delivery_id: uuid.UUID
    attempt: int


@dataclass
class Holding:
    token: FencingToken
    deadline: float  # on clock(): the lease is proven held until then
    body_running: bool = True
    lost: str = ""  # why ownership is known lost ("" while held)
    stop_by: float = math.inf  # on clock(): a cancel was requested; the grace ends then


# The pool model of this process, set by the worker's signal handlers: a prefork child fences by
# SIGKILL; the main process watches its children through files in `_children_dir`.
_is_pool_child = False
_children_dir: str | None = None
_current: contextvars.ContextVar[Holding | None] = contextvars.ContextVar("medic_fence", default=None)


class Fence:
    """The leases this process holds, and the thread that stops a job past its own."""

    def __init__(self, _key: object = None) -> None:
        self._held: dict[uuid.UUID, Holding] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        if _children_dir is not None and _is_pool_child:
            path = os.path.join(_children_dir, str(os.getpid()))
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self._publish()
        self._thread = BackgroundThread("medic-fence", self.check, every_s=CHECK_EVERY_S, logger=log).start()

    def hold(self, token: FencingToken, *, sent_at: float, lease_s: float) -> Holding:
        """Start fencing a job just claimed; `sent_at` is clock() read before the claim was sent."""
        holding = Holding(token, sent_at + lease_s)
        with self._lock:
            self._held[token.job_id] = holding
            self._publish()
        return holding

    def confirm(self, asked: Mapping[uuid.UUID, uuid.UUID], extended: Iterable[uuid.UUID], *, sent_at: float,
                lease_s: float) -> None:  # fmt: skip
        """A lease extension for `asked` (job -> delivery) came back: push the deadline of each job
        it extended; a job it did not extend was taken away (or finished), so it is lost."""
        done = set(extended)
        with self._lock:
            for job_id, delivery_id in asked.items():
                h = self._held.get(job_id)
                if h is None or h.token.delivery_id != delivery_id:
                    continue
                if job_id in done:
                    h.deadline = min(max(h.deadline, sent_at + lease_s), h.stop_by)
                elif h.body_running and not h.lost:
                    h.lost = "the ledger did not extend its lease (taken away)"
            self._publish()
        self.check()

    def stop_within(self, job_id: uuid.UUID, grace_s: float) -> None:
        """The job's cancel was requested: its body may run `grace_s` more seconds, then the same
        guards that enforce the lease kill it (a prefork child; other pools are only told)."""
        with self._lock:
            if (h := self._held.get(job_id)) is not None:
                h.stop_by = min(h.stop_by, clock() + grace_s)
                h.deadline = min(h.deadline, h.stop_by)
            self._publish()

    def body_done(self, job_id: uuid.UUID) -> None:
        """The job's function returned: nothing of it runs any more, and its finalize is fenced by
        the ledger (delivery id in the WHERE), so no guard may kill the process for it now."""
        with self._lock:
            if (h := self._held.get(job_id)) is not None:
                h.body_running = False
            self._publish()

    def release(self, job_id: uuid.UUID) -> None:
        with self._lock:
            self._held.pop(job_id, None)
            self._publish()

    def check(self) -> None:
        """Stop every job whose ownership is lost or no longer proven."""
        now = clock()
        tripped: list[Holding] = []
        with self._lock:
            for h in self._held.values():
                if not h.body_running:
                    continue
                if not h.lost and now >= h.stop_by:
                    h.lost = "its cancel was requested and the grace is over"
                elif not h.lost and now >= h.deadline:
                    h.lost = f"lease not confirmed for {now - h.deadline + 0.0:.3f}s past its deadline"
                if h.lost:
                    tripped.append(h)
        for h in tripped:
            _trip(h)

    def _publish(self) -> None:
        """The earliest deadline of a running job body (0: none), for the main process's guard."""
        if self._fd is None:
            return
        running = [h.deadline for h in self._held.values() if h.body_running]
        os.pwrite(self._fd, _DEADLINE.pack(min(running) if running else 0.0), 0)

    def stop(self) -> None:
        self._thread.stop()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_tripped_logged: set[uuid.UUID] = set()


def _trip(h: Holding) -> None:
    if _is_pool_child:
        # os.write, not logging: a logging handler may hold a lock another thread took.
        os.write(2, f"medic: fencing job {h.token.job_id} delivery {h.token.delivery_id}: {h.lost}; "
                    f"killing process {os.getpid()}\n".encode())  # fmt: skip
        os.kill(os.getpid(), signal.SIGKILL)
    if h.token.job_id not in _tripped_logged:
        _tripped_logged.add(h.token.job_id)
        log.error("job %s delivery %s is no longer owned by this process: %s (still_owner() is now False)",
                  h.token.job_id, h.token.delivery_id, h.lost)  # fmt: skip


_fence: PerProcess[None, Fence] = PerProcess(Fence, close=Fence.stop)


def get_fence() -> Fence:
    """This process's fence, started on first use (a forked child starts its own)."""
    return _fence.get(None)


def peek_fence() -> Fence | None:
    """This process's fence if it runs jobs (else None: nothing to confirm)."""
    return _fence.peek()


@contextmanager
def running(holding: Holding) -> Iterator[None]:
    """Make `holding` the current job of this thread (what still_owner() and fencing_token() see)."""
    reset = _current.set(holding)
    try:
        yield
    finally:
        _current.reset(reset)


def still_owner() -> bool:
    """Does this process still provably own the job it is running? False once its lease is past
    its confirmed deadline or was taken away. Costs a clock read: call it before every external
    side effect. Outside a job it is False (there is nothing to own)."""
    h = _current.get()
    return h is not None and not h.lost and clock() < h.deadline


def fencing_token() -> FencingToken:
    """The current job's token, for systems that can reject a stale writer (see docs/guarantees.md)."""
    h = _current.get()
    if h is None:
        raise LookupError("fencing_token() is only defined inside a running job")
    return h.token


# --- the worker's main process -------------------------------------------------------------


def on_worker_process_init(**_: Any) -> None:
    """A prefork child: it fences by killing itself."""
    global _is_pool_child
    _is_pool_child = True


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


class ChildGuard:
    """In the main process: SIGKILL any child whose job body is past its deadline."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.killed = 0
        self._thread = BackgroundThread("medic-fence-children", self.check, every_s=CHECK_EVERY_S, logger=log)
        self._thread.start()

    def check(self) -> None:
        now, me = clock(), os.getpid()
        for name in os.listdir(self.folder):
            path = os.path.join(self.folder, name)
            pid = int(name)
            if _parent_of(pid) != me:  # gone (or the pid reused by a stranger): forget it
                with suppress(OSError):
                    os.unlink(path)
                continue
            try:
                with open(path, "rb") as f:
                    raw = f.read(_DEADLINE.size)
            except OSError:
                continue
            if len(raw) != _DEADLINE.size:
                continue
            (deadline,) = _DEADLINE.unpack(raw)
            if deadline and now >= deadline:
                log.error("child %d is %.3fs past its job's lease deadline (stopped? hung?); killing it",
                          pid, now - deadline)  # fmt: skip
                with suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.unlink(path)
                self.killed += 1

    def stop(self) -> None:
        self._thread.stop()
        self._thread.join(1)
        shutil.rmtree(self.folder, ignore_errors=True)


_guard: ChildGuard | None = None


def on_worker_init(sender: Any = None, **_: Any) -> None:
    """The worker's main process, before it forks its pool: make the folder the children write
    their deadlines to, and start watching it (prefork only)."""
    global _children_dir, _guard
    from worker.runtime.worker_info import is_test_worker

    if is_test_worker(sender) or _guard is not None:
        return
    from celery.concurrency import get_implementation

    # worker_init comes before Celery resolves its pool class from the name (`-P prefork`).
    if "prefork" not in get_implementation(getattr(sender, "pool_cls", None) or "prefork").__module__:
        return
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    _children_dir = tempfile.mkdtemp(prefix=f"medic-fence-{os.getpid()}-", dir=base)
    _guard = ChildGuard(_children_dir)


def on_worker_shutdown(**_: Any) -> None:
    global _guard
    if _guard is not None:
        _guard.stop()
        _guard = None
