"""Reading the ledger from a test: a job's row and the reasons of its events."""

from __future__ import annotations

import uuid

from worker.ledger import db, queries
from worker.ledger.models import JobRow


def job(job_id: uuid.UUID) -> JobRow:
    with db.connect() as conn:
        row = queries.get_job(conn, job_id)
    assert row is not None
    return row


def reasons(job_id: uuid.UUID) -> list[str]:
    with db.connect() as conn:
        return [e.reason for e in queries.get_events(conn, job_id)]
