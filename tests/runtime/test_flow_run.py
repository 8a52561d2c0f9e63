"""Flow control on real `celery worker` processes and the control loops: jobs of one key never
overlap while other keys run beside them, a SIGKILLed holder frees its key within the recovery
bound, and a rate limit spaces starts without failing a job. Histories come from the jobs' own
results (their start and end times) and from the ledger's events, checked against each other.

Each module has its own ledger (`private_ledger`): the control loops scan every job."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ledger_view import job
from worker.accept import enqueue
from worker.ledger import db, queries
from worker.ledger.records import Job
from worker.settings import get_settings
from worker.testing.processes import Proc, Processes, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(110)]

TERMINAL = {"succeeded", "dead", "cancelled"}


@pytest.fixture
def fprocs(private_ledger: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    p = Processes(private_ledger, tmp_path)
    yield p
    p.stop_all()


def _queue() -> str:
    return f"q-flow-{uuid.uuid4().hex[:8]}"


def _workers(procs: Processes, queue: str, n: int = 2, concurrency: int = 2) -> list[Proc]:
    made = [procs.worker(f"flow{i}-{queue[-4:]}", queues=queue, concurrency=concurrency) for i in range(n)]
    procs.control_plane()
    return made


def _wait_all(ids: list[uuid.UUID], timeout: float) -> list[Job]:
    def done() -> list[Job] | None:
        rows = [job(i) for i in ids]
        return rows if all(r.state in TERMINAL for r in rows) else None

    found = wait_for(done, timeout, 0.2, f"{len(ids)} jobs finished")
    assert found is not None
    return found


def _wait_job(job_id: uuid.UUID, states: set[str], timeout: float, what: str) -> Job:
    def reached() -> Job | None:
        row = job(job_id)
        return row if row.state in states else None

    found = wait_for(reached, timeout, 0.05, what)
    assert found is not None
    return found


def _claimed_runs(job_id: uuid.UUID) -> list[tuple[dt.datetime, dt.datetime | None]]:
    """The ledger's history of one job: each claim and the event that ended that run."""
    with db.connect() as conn:
        evs = queries.get_events(conn, job_id)
    runs: list[tuple[dt.datetime, dt.datetime | None]] = []
    for e in evs:
        if e.to_state == "running":
            runs.append((e.at, None))
        elif e.from_state == "running" and runs:
            runs[-1] = (runs[-1][0], e.at)
    return runs


def _timeline(job_id: uuid.UUID) -> list[str]:
    with db.connect() as conn:
        return [
            f"{e.at:%H:%M:%S.%f} {e.from_state}->{e.to_state} {e.reason} {e.actor}"
            for e in queries.get_events(conn, job_id)
        ]


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_jobs_of_one_account_never_overlap_and_accounts_run_side_by_side(fprocs: Processes) -> None:
    """Given 2 workers x 2 children and examples.per_account (limit 1 per account),
    When 30 jobs over 3 accounts are submitted at once,
    Then no two jobs of one account ran at once (by their own times and by the ledger's claims),
    and jobs of different accounts did."""
    queue = _queue()
    _workers(fprocs, queue)
    accounts = ("a1", "a2", "a3")
    ids = [
        enqueue("examples.per_account", {"account": acc, "seconds": 0.2}, tenant="flow", queue=queue).job.id
        for _ in range(10)
        for acc in accounts
    ]
    rows = _wait_all(ids, 60)
    assert {r.state for r in rows} == {"succeeded"}

    own = {
        acc: sorted((r.result["started"], r.result["ended"]) for r in rows if r.args["account"] == acc)
        for acc in accounts
    }
    ledger: dict[str, list[tuple[float, float]]] = {acc: [] for acc in accounts}
    for r in rows:
        for start, end in _claimed_runs(r.id):
            assert end is not None
            ledger[r.args["account"]].append((start.timestamp(), end.timestamp()))
    for history in (own, ledger):
        for acc, runs in history.items():
            runs.sort()
            assert len(runs) == 10
            for a, b in itertools.pairwise(runs):
                assert not _overlap(a, b), f"two jobs of {acc} overlapped: {a} {b}"
    across = sum(_overlap(a, b) for x, y in itertools.combinations(accounts, 2) for a in own[x] for b in own[y])
    assert across > 0, "different accounts never ran at the same time"


def test_a_sigkilled_holder_frees_its_key_within_the_recovery_bound(fprocs: Processes) -> None:
    """Given a long per_account job of account X running and a short one of X (priority 9) held
    behind it,
    When the whole worker running the long one is SIGKILLed,
    Then the short one starts within lease + margin + recover period (+ one dispatch period and
    a delivery), and the long one is retried (held, then run again once the key allows)."""
    s = get_settings()
    queue = _queue()
    workers = _workers(fprocs, queue)
    long_id = enqueue("examples.per_account", {"account": "x", "seconds": 12}, tenant="flow", queue=queue).job.id
    running = _wait_job(long_id, {"running"}, 30, "long job running")
    # priority 9: first in the key's line (its rank is 9 aging steps earlier), so once the lost run
    # frees the key the short one is the next to take it, ahead of the lost run's retry
    short_id = enqueue(
        "examples.per_account", {"account": "x", "seconds": 0.2}, tenant="flow", queue=queue, priority=9
    ).job.id
    assert job(short_id).state == "held", "the key is taken: the short one waits in the ledger"

    assert running.worker is not None
    [holder] = [w for w in workers if running.worker.startswith(w.name + "@")]
    assert running.worker_pid in holder.children()
    killed_at = time.time()
    holder.kill_group(signal.SIGKILL)

    bound = (
        s.lease_seconds + s.lease_margin_seconds + s.recover_period_seconds + s.dispatch_period_seconds + 2.0
    )  # 2 s: the recover and the delivery themselves (one beat tick, a claim)
    short = _wait_job(short_id, TERMINAL, bound + 20, "short job done")
    assert short.state == "succeeded"
    assert short.result["started"] - killed_at <= bound, (
        f"the short job started {short.result['started'] - killed_at:.1f} s after the kill; bound {bound:.1f} s;"
        f" long: {_timeline(long_id)}; short: {_timeline(short_id)}"
    )
    long = _wait_job(long_id, TERMINAL, 60, "long job done")
    assert long.state == "succeeded" and long.attempts == 2
    with db.connect() as conn:
        moves = [(e.from_state, e.to_state) for e in queries.get_events(conn, long_id)]
    assert ("running", "held") in moves, "the lost run went back to the dispatcher"
    assert long.result["started"] >= short.result["ended"], "the retry waited for the key"
    assert not _alive(running.worker_pid)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_rate_limit_spaces_starts_and_delays_without_failing(fprocs: Processes) -> None:
    """Given examples.throttled (5/s) and 2 workers x 4 children,
    When 40 jobs are submitted at once,
    Then every 1 s window holds at most 5 + 1 starts (by the jobs' own times and the ledger's),
    and every job succeeded on its first attempt: delayed, not failed."""
    queue = _queue()
    _workers(fprocs, queue, concurrency=4)
    ids = [enqueue("examples.throttled", {"n": n}, tenant="flow", queue=queue).job.id for n in range(40)]
    rows = _wait_all(ids, 60)
    assert {r.state for r in rows} == {"succeeded"}, "none dead"
    assert {r.attempts for r in rows} == {1}, "a job over the rate is delayed, not retried"
    own = sorted(float(r.result["started"]) for r in rows)
    claimed = sorted(r.started_at.timestamp() for r in rows if r.started_at is not None)
    assert len(claimed) == 40
    for starts in (own, claimed):
        for i, t in enumerate(starts):
            in_window = sum(1 for u in starts[i:] if u < t + 1.0)
            assert in_window <= 6, f"{in_window} starts in the second from {t:.3f}"
