"""The dialect seam: what differs between PostgreSQL and SQLite is asked of worker/ledger/dialect.py,
and the two reads it offers callers outside the ledger answer on each backend."""

from __future__ import annotations

import os
import re
from pathlib import Path

import sqlalchemy as sa

from worker.ledger import db, queries

LEDGER = Path(__file__).resolve().parents[2] / "worker" / "ledger"


def test_only_the_seam_asks_which_database_it_is() -> None:
    # Bug caught: an `if postgresql / else sqlite` written again outside the seam. Migrations are
    # history, kept as they ran: they are left out.
    asking = re.compile(r"\bdialect\.name\b")
    found = [
        str(path.relative_to(LEDGER))
        for path in LEDGER.rglob("*.py")
        if path.name != "dialect.py" and "versions" not in path.parts and asking.search(path.read_text())
    ]
    assert found == []


def test_server_connections_on_each_backend(engine: sa.Engine) -> None:
    # Bug caught: the server's view of connections missing on PostgreSQL (the pool alerts go
    # blind) or a PostgreSQL-only query sent to SQLite.
    with engine.connect() as conn:
        seen = queries.server_connections(conn)
    if engine.dialect.name != "postgresql":
        assert seen is None
        return
    assert seen is not None
    assert seen["busy_by_process"].get(f"medic-{os.getpid()}", 0) >= 1  # this very connection
    assert 1 <= seen["connections"] <= seen["max_connections"]


def test_a_snapshot_reads_one_snapshot(medic_env: dict[str, str]) -> None:
    # Bug caught: db.snapshot() at READ COMMITTED: a stream's read and its horizon would come
    # from two snapshots, and a hole could be given up while its transaction still runs.
    with db.snapshot() as conn:
        assert conn.scalar(sa.text("SHOW transaction_isolation")) == "repeatable read"
        xmin, xmax = queries.snapshot_horizon(conn)
    assert 0 < xmin <= xmax
