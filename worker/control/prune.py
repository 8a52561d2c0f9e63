"""prune: finished jobs and their events past the retention period, deleted in batches, and
finished workflows with their step rows; known queues idle and empty past
MEDIC_QUEUE_FORGET_SECONDS, forgotten."""

from __future__ import annotations

import datetime as dt
import time

from worker.broker import counters
from worker.clock import seconds
from worker.ledger import db, decisions, queries, transitions, workflows
from worker.settings import get_settings


def prune(now: dt.datetime, *, batch: int = 2000, budget_s: float | None = None) -> dict[str, int]:
    """Delete batch after batch until nothing expired is left or the time budget is spent.

    Each batch is its own short transaction, so pruning a large backlog never holds long locks
    and the API and workers write in between. The budget (`prune_budget_seconds`, capped at the
    period) keeps a run well inside the loop lock's TTL (3 x period): what is left waits for the
    next run. At least one batch runs whatever the budget, so every run makes progress.
    """
    s = get_settings()
    if budget_s is None:
        budget_s = min(s.prune_budget_seconds, s.prune_period_seconds)
    cutoff = now - seconds(s.retention_days * 86400)
    deadline = time.monotonic() + budget_s
    deleted = 0
    while True:
        with db.begin() as conn:
            ids = queries.finished_before(conn, cutoff, batch)
            transitions.delete_jobs(conn, ids)
        deleted += len(ids)
        if len(ids) < batch or time.monotonic() >= deadline:
            break
    with db.begin() as conn:  # one batch a run: a workflow is one row for up to 1000 jobs
        workflows_deleted = workflows.prune_finished_before(conn, cutoff, batch)
    forgotten = counters.forget_idle(now.timestamp(), s.queue_forget_seconds)
    return {
        "deleted": deleted,
        "workflows_deleted": workflows_deleted,
        "decisions_deleted": decisions.prune_before(cutoff),
        "queues_forgotten": len(forgotten),
    }
