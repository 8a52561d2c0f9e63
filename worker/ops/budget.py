"""The connection budget: PostgreSQL's connection slots shared out before a process starts.

Every medic process that touches the ledger keeps its own pool (a prefork child too: engines are
made per process), of up to MEDIC_DB_POOL_SIZE connections plus as many again on overflow. Six
default processes can hold every one of PostgreSQL's 100 slots, and the next connection anywhere
fails with "remaining connection slots are reserved". So `medic up` and `medic worker` add up
what they would hold at most and refuse to start when it does not fit in what the server has
left: max_connections, minus the slots reserved for superusers (and `reserved_connections`,
PostgreSQL 16+), minus the connections open now.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from worker.ledger.db import pool_capacity
from worker.settings import Settings


@dataclass(frozen=True)
class Share:
    """What a set of processes may hold: `processes` pools of `per_process` connections each."""

    what: str
    processes: int
    per_process: int

    @property
    def connections(self) -> int:
        return self.processes * self.per_process


@dataclass(frozen=True)
class ServerSlots:
    max_connections: int
    reserved: int
    in_use: int

    @property
    def available(self) -> int:
        return self.max_connections - self.reserved - self.in_use


def per_process(s: Settings) -> int:
    """What one process's pool may hold (pool size + overflow)."""
    return pool_capacity(s.db_pool_size)


def worker_pool_size(s: Settings) -> int:
    """The pool size a worker process gets: MEDIC_DB_POOL_SIZE if set explicitly, else
    MEDIC_WORKER_DB_POOL_SIZE (a child runs one job at a time: claim, finalize, heartbeat)."""
    return s.db_pool_size if "db_pool_size" in s.model_fields_set else s.worker_db_pool_size


def worker_env(s: Settings) -> dict[str, str]:
    """Environment that gives a worker process its pool size."""
    return {"MEDIC_DB_POOL_SIZE": str(worker_pool_size(s))}


def worker_share(s: Settings, concurrency: int, what: str = "worker") -> Share:
    """A prefork worker: its main process and each child keep a pool."""
    return Share(what, concurrency + 1, pool_capacity(worker_pool_size(s)))


def stack_shares(s: Settings, *, workers: int, concurrency: int) -> list[Share]:
    """What `medic up` runs: one API, the workers, the control worker (2 children); beat and
    Flower never open the ledger."""
    return [
        Share("api", 1, per_process(s)),
        Share(
            f"{workers} worker(s) x {concurrency + 1} processes",
            workers * (concurrency + 1),
            pool_capacity(worker_pool_size(s)),
        ),
        worker_share(s, 2, "control"),
    ]


def server_slots(database_url: str) -> ServerSlots:
    """Ask the server (its maintenance database: the ledger's may not exist yet)."""
    url = make_url(database_url).set(database="postgres")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            max_conn = int(conn.scalar(sa.text("SHOW max_connections")) or 0)
            reserved = int(conn.scalar(sa.text("SHOW superuser_reserved_connections")) or 0)
            extra = conn.scalar(sa.text("SELECT setting FROM pg_settings WHERE name = 'reserved_connections'"))
            clients = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            in_use = int(conn.scalar(sa.text(clients)) or 0)
    finally:
        engine.dispose()
    # our own check connection is counted in `in_use`, and gone once we return: give it back
    return ServerSlots(max_conn, reserved + int(extra or 0), max(0, in_use - 1))


def check(shares: list[Share], database_url: str) -> str | None:
    """None when `shares` fit in what the server has left, else the message that says how to fix it.
    Not PostgreSQL (SQLite): no budget."""
    if not make_url(database_url).get_backend_name().startswith("postgresql"):
        return None
    slots = server_slots(database_url)
    need = sum(share.connections for share in shares)
    if need <= slots.available:
        return None
    parts = "; ".join(f"{sh.what}: {sh.processes} x {sh.per_process}" for sh in shares)
    return (
        f"connection budget exceeded: these processes may open up to {need} ledger connections ({parts}; "
        f"each process: MEDIC_DB_POOL_SIZE + as many on overflow), but PostgreSQL has {slots.available} left "
        f"(max_connections {slots.max_connections} - {slots.reserved} reserved - {slots.in_use} in use).\n"
        "Fix: lower MEDIC_DB_POOL_SIZE (a worker child runs one job at a time: 2 is plenty), lower the "
        "concurrency or the number of workers, put PgBouncer in front, or raise max_connections."
    )
