"""A job for tests/ops/test_metrics_worker.py: make one ledger pool checkout time out inside a
real worker child, the way a process whose pool is used up sees it."""

from __future__ import annotations

from worker.errors import LedgerUnavailableError
from worker.ledger import db
from worker.runtime.registry import job
from worker.settings import get_settings


@job("tests.pool_timeout")
def pool_timeout() -> str:
    """Hold both connections of a pool of 1 + 1 overflow, then ask it for a third (0.2 s wait).

    A pool of its own, not the process's: the heartbeat thread shares the process's pool, and a
    beat that waited too would count a second timeout."""
    engine = db.make_engine(get_settings().database_url, pool_size=1, pool_timeout=0.2)
    held = [engine.connect(), engine.connect()]
    try:
        with db.ledger_errors(), engine.connect():
            pass
    except LedgerUnavailableError as exc:
        return str(exc)
    finally:
        for conn in held:
            conn.close()
        engine.dispose()
    raise AssertionError("a checkout past a full pool did not time out")
