"""Small durable facts of the control plane, kept in the ledger because Redis may forget them:
the broker's run_id (to tell a restart from a first start) and the republish marker after one."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from worker.ledger import db, dialect
from worker.ledger.models import control_state

BROKER_RUN_ID = "broker_run_id"
REPUBLISH_BEFORE = "broker_republish_before"


def get(name: str) -> str | None:
    with db.connect() as conn:
        return conn.scalar(sa.select(control_state.c.value).where(control_state.c.name == name))


def put(name: str, value: str, *, now: dt.datetime) -> None:
    with db.begin() as conn:
        changed = {"value": value, "updated_at": now}
        conn.execute(dialect.of(conn).insert_on_conflict(control_state, {"name": name, **changed}, ["name"], changed))


def delete(name: str) -> None:
    with db.begin() as conn:
        conn.execute(sa.delete(control_state).where(control_state.c.name == name))
