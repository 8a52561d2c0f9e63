"""Reading the ledger from a test: a job's row, the reasons of its events, and the check that no
two executions of one job overlapped (ledger claims joined with the recorded executions)."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from tests.testjobs import job_executions
from worker.ledger import db, queries
from worker.ledger.models import control_decisions
from worker.ledger.records import Job


def job(job_id: uuid.UUID) -> Job:
    with db.connect() as conn:
        row = queries.get_job(conn, job_id)
    assert row is not None
    return row


def reasons(job_id: uuid.UUID) -> list[str]:
    with db.connect() as conn:
        return [e.reason for e in queries.get_events(conn, job_id)]


def pause_decisions(queue: str) -> list[str]:
    """The queue's audited pause and resume decisions, in order (the scaling loop audits its own too)."""
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(control_decisions.c.kind)
            .where(control_decisions.c.queue == queue, control_decisions.c.kind.in_(["pause", "resume"]))
            .order_by(control_decisions.c.id)
        )
        return list(rows.scalars())


@dataclass(frozen=True)
class Execution:
    """How long one delivery of a job held it: from its claim (or its process's start) to the
    ledger's close of that delivery (or its process's end, if later)."""

    job_id: str
    delivery: str
    start: float
    end: float


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def executions_by_delivery(job_id: uuid.UUID) -> list[Execution]:
    """One interval per claimed delivery of `job_id`, from the ledger's events and the recorder.

    A `claimed` event opens an interval for its delivery; the next event leaving `running`
    (succeeded, error/worker_lost -> queued|dead, timeout, cancelled) closes it. The close event
    of a give-back carries the NEW delivery_id (the row after the update), so it is matched by
    order, not by id. A recorded execution (tests/testjobs.py) widens its delivery's interval;
    one without an end was killed: its pid must be gone, and it is taken to last until the ledger
    closed its delivery (a still-running pid, or no close, lasts until now).
    """
    now = time.time()
    with db.connect() as conn:
        events = queries.get_events(conn, job_id)
    spans: dict[str, list[float]] = {}
    current: str | None = None
    for e in events:
        if e.reason == "claimed":
            assert current is None, f"job {job_id}: delivery {e.delivery_id} claimed while {current} was running"
            current = str(e.delivery_id)
            assert current not in spans, f"job {job_id}: delivery {current} claimed twice"
            spans[current] = [e.at.timestamp(), now]
        elif e.from_state == "running" and e.to_state != "running" and current is not None:
            spans[current][1] = e.at.timestamp()
            current = None
    seen: set[str] = set()
    for run in job_executions(str(job_id)):
        delivery = str(run["delivery"])
        assert delivery in spans, f"job {job_id}: delivery {delivery} ran without a claim: {run}"
        assert delivery not in seen, f"job {job_id}: delivery {delivery} ran twice"
        seen.add(delivery)
        span = spans[delivery]
        span[0] = min(span[0], float(run["start"]))
        if float(run["end"]):
            span[1] = max(span[1], float(run["end"]))
        elif _alive(int(run["pid"])):
            span[1] = now  # never ended and its process lives: it may still be running
    return [Execution(str(job_id), d, start, end) for d, (start, end) in spans.items()]


def assert_disjoint(runs: list[Execution]) -> None:
    """Fail if two executions of one job overlap in time."""
    by_job: dict[str, list[Execution]] = {}
    for run in runs:
        by_job.setdefault(run.job_id, []).append(run)
    for job_runs in by_job.values():
        ordered = sorted(job_runs, key=lambda r: r.start)
        for earlier, later in itertools.pairwise(ordered):
            assert later.start >= earlier.end, f"overlapping executions: {earlier} and {later}"


def assert_no_overlap(job_ids: Iterable[uuid.UUID]) -> None:
    """No two deliveries of any of these jobs held the job at the same time."""
    for job_id in job_ids:
        assert_disjoint(executions_by_delivery(job_id))
