"""Servers of a test's own: a throwaway PostgreSQL cluster it may restart, and the admin
statements a run needs to create and drop its database and delete its Redis keys."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import redis
import sqlalchemy as sa

from worker.ops.stack import free_port

PG_ADMIN_URL = os.environ.get("MEDIC_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def pg_admin_execute(sql: str) -> None:
    """Run one statement on the maintenance database (CREATE / DROP DATABASE)."""
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()


def delete_keys(redis_url: str, prefix: str) -> None:
    """Remove every Redis key of one run's prefix."""
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)


def pg_bin() -> Path:
    """The installed PostgreSQL's binary folder: `pg_config --bindir` if pg_config is there, else
    the highest-numbered /usr/lib/postgresql/*/bin holding initdb (.ci/run uses the same rule).
    Debian's pg_config is the client package's and may exist without a server; hence the initdb check."""
    if pg_config := shutil.which("pg_config"):
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if found and (Path(found) / "initdb").exists():
            return Path(found)
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    if not candidates:
        raise FileNotFoundError("no PostgreSQL initdb under pg_config --bindir or /usr/lib/postgresql/*/bin")
    return max(candidates, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on its own port, run as the `postgres` user (PostgreSQL
    refuses root), so a test can restart it without touching the shared server."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="medic-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        shutil.chown(self.dir, "postgres", "postgres")
        self.bin = pg_bin()
        initdb = str(self.bin / "initdb")
        self._as_postgres([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/medic"

    def _as_postgres(self, argv: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, timeout=120)

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", *args])

    def start(self) -> None:
        self._ctl("-l", str(self.dir / "server.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
