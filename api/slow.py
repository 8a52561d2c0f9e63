"""Time spent in the ledger per request, for the slow-request log.

SQLAlchemy's cursor events (registered on the Engine class, so the per-process engine made after
a fork has them too) add each statement's time to a mutable cell in a context variable. A sync
route runs in a worker thread with a copy of the request's context, so the cell (not the
variable) is what carries the time back.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

ledger_seconds: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("ledger_seconds", default=None)


def start() -> list[float]:
    cell = [0.0]
    ledger_seconds.set(cell)
    return cell


@event.listens_for(Engine, "before_cursor_execute")
def _before(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool) -> None:
    conn.info.setdefault("medic_started", []).append(time.perf_counter())


@event.listens_for(Engine, "after_cursor_execute")
def _after(conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool) -> None:
    stack = conn.info.get("medic_started")
    if not stack:
        return
    elapsed = time.perf_counter() - stack.pop()
    cell = ledger_seconds.get()
    if cell is not None:
        cell[0] += elapsed
