"""prune: finished jobs and their events past the retention period, deleted in batches."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from worker import db, decisions
from worker.clock import seconds
from worker.models import job_events, jobs
from worker.settings import get_settings
from worker.states import TERMINAL_STATES

MAX_BATCHES_PER_RUN = 20


def prune(now: dt.datetime, *, batch: int = 1000) -> dict[str, int]:
    """Short transactions, so pruning a large backlog never holds long locks."""
    cutoff = now - seconds(get_settings().retention_days * 86400)
    deleted = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        with db.begin() as conn:
            ids = list(
                conn.scalars(
                    sa.select(jobs.c.id)
                    .where(jobs.c.state.in_([s.value for s in TERMINAL_STATES]), jobs.c.finished_at < cutoff)
                    .limit(batch)
                )
            )
            if not ids:
                break
            conn.execute(sa.delete(job_events).where(job_events.c.job_id.in_(ids)))
            conn.execute(sa.delete(jobs).where(jobs.c.id.in_(ids)))
            deleted += len(ids)
        if len(ids) < batch:
            break
    return {"deleted": deleted, "decisions_deleted": decisions.prune_before(cutoff)}
