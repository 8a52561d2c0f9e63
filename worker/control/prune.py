"""prune: finished jobs and their events past the retention period, deleted in batches."""

from __future__ import annotations

import datetime as dt

from worker.clock import seconds
from worker.ledger import db, decisions, queries, transitions
from worker.settings import get_settings

MAX_BATCHES_PER_RUN = 20


def prune(now: dt.datetime, *, batch: int = 1000) -> dict[str, int]:
    """Short transactions, so pruning a large backlog never holds long locks."""
    cutoff = now - seconds(get_settings().retention_days * 86400)
    deleted = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        with db.begin() as conn:
            ids = queries.finished_before(conn, cutoff, batch)
            if not ids:
                break
            transitions.delete_jobs(conn, ids)
            deleted += len(ids)
        if len(ids) < batch:
            break
    return {"deleted": deleted, "decisions_deleted": decisions.prune_before(cutoff)}
