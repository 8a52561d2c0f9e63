"""The audit trail of the control plane: every admission transition and scaling decision, with
the inputs it was made from, in the ledger (pruned with the jobs)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from worker.ledger import db
from worker.ledger.models import control_decisions

ADMISSION = "admission"
SCALE = "scale"


def record(kind: str, queue: str, summary: str, inputs: dict[str, Any], *, now: dt.datetime) -> None:
    with db.begin() as conn:
        conn.execute(control_decisions.insert().values(at=now, kind=kind, queue=queue, summary=summary, inputs=inputs))


def latest(queue: str, kind: str, limit: int = 1) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(control_decisions)
            .where(control_decisions.c.queue == queue, control_decisions.c.kind == kind)
            .order_by(control_decisions.c.id.desc())
            .limit(limit)
        ).all()
    return [{"at": r.at.isoformat(), "summary": r.summary, "inputs": r.inputs} for r in rows]


def prune_before(cutoff: dt.datetime) -> int:
    with db.begin() as conn:
        result = conn.execute(sa.delete(control_decisions).where(control_decisions.c.at < cutoff))
    return int(result.rowcount or 0)
