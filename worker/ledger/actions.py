"""The action log: what operators did through the console or a bulk route, one row per action.

Each job a bulk action touches also gets its own job event (the audit of the job); this log is
the audit of the operator: who asked, with which filter, how many jobs matched and changed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from worker.ledger.models import console_actions


@dataclass(frozen=True)
class Action:
    id: int
    at: dt.datetime
    actor: str
    tenant: str
    action: str
    target: dict[str, Any]
    matched: int
    changed: int
    more: bool
    detail: dict[str, Any] | None


def record(
    conn: Connection,
    *,
    actor: str,
    tenant: str,
    action: str,
    target: dict[str, Any],
    matched: int,
    changed: int,
    now: dt.datetime,
    more: bool = False,
    detail: dict[str, Any] | None = None,
) -> None:
    """Log one action, in the caller's transaction: the log and the change commit together."""
    conn.execute(
        console_actions.insert().values(
            at=now,
            actor=actor,
            tenant=tenant,
            action=action,
            target=target,
            matched=matched,
            changed=changed,
            more=more,
            detail=detail,
        )
    )


def recent(conn: Connection, *, tenant: str | None, limit: int, before: int | None = None) -> list[Action]:
    """The newest actions first: one tenant's, or every tenant's (None); `before` is the last id seen."""
    stmt = sa.select(console_actions)
    if tenant is not None:
        stmt = stmt.where(console_actions.c.tenant == tenant)
    if before is not None:
        stmt = stmt.where(console_actions.c.id < before)
    return [Action(**row._asdict()) for row in conn.execute(stmt.order_by(console_actions.c.id.desc()).limit(limit))]
