"""A PgBouncer of a test's (or a bench's) own, in transaction mode, in front of a PostgreSQL server:
the pooler most production ledgers sit behind, so medic is run through a real one.

`default_pool_size` is small on purpose: with fewer server connections than medic's processes hold
client connections, consecutive transactions of one client land on different server sessions and
one server session serves many clients, which is what breaks session state (SET, PREPARE, LISTEN,
session advisory locks). PgBouncer refuses to run as root, so as root it runs with `-u nobody`
and its files are made readable by that user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from worker.ops.stack import free_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


class PrivatePgBouncer:
    """`pgbouncer` on a free 127.0.0.1 port, `pool_mode = transaction`, trust auth as `user`;
    started with `start()`, stopped by its own PID with `stop()`."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 5432, *, pool_size: int = 4, user: str = "postgres"
    ) -> None:
        self.server = (host, port)
        self.pool_size = pool_size
        self.user = user
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="medic-pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str, base: str = "postgresql+psycopg2://postgres@127.0.0.1/postgres") -> str:
        """`base` (a SQLAlchemy URL) pointed at this PgBouncer and `database`."""
        made = sa.engine.make_url(base).set(host="127.0.0.1", port=self.port, database=database)
        return str(made.render_as_string(hide_password=False))

    def _ini(self) -> str:
        host, port = self.server
        return "\n".join(
            [
                "[databases]",
                f"* = host={host} port={port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {self.dir / 'users.txt'}",
                f"admin_users = {self.user}",
                "pool_mode = transaction",
                f"default_pool_size = {self.pool_size}",
                "min_pool_size = 0",
                "reserve_pool_size = 0",
                "max_client_conn = 1000",
                "server_lifetime = 3600",
                "log_connections = 0",
                "log_disconnections = 0",
                "",
            ]
        )

    def start(self, timeout: float = 10.0) -> None:
        ini = self.dir / "pgbouncer.ini"
        ini.write_text(self._ini())
        (self.dir / "users.txt").write_text(f'"{self.user}" ""\n')
        for path in (self.dir, ini, self.dir / "users.txt"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        argv = [PGBOUNCER, str(ini)]
        if os.geteuid() == 0:
            argv[1:1] = ["-u", "nobody"]
        log = open(self.dir / "pgbouncer.log", "wb")  # noqa: SIM115 - the child holds it; closed here after Popen
        with log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pgbouncer did not start: {self.log()}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def admin(self, command: str) -> list[dict[str, object]]:
        """One command of PgBouncer's admin console (`SHOW POOLS`, `SHOW SERVERS`): rows as dicts."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="pgbouncer")
        try:
            conn.autocommit = True  # the console takes no BEGIN
            with conn.cursor() as cur:
                cur.execute(command)
                names = [d[0] for d in cur.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()

    def stop(self) -> None:
        """SIGTERM (immediate shutdown in 1.18), SIGKILL if it lingers; then remove its files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)
