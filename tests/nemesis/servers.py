"""The data host's servers: a private PostgreSQL cluster and a private Redis, each started inside
the data host's namespace, listening on its private address (and on a unix socket in the run's
directory, which the root namespace can reach: sockets are files, not network)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.nemesis.netns import Network
from worker.testing.servers import pg_bin

PG_PORT = 5432
REDIS_PORT = 6379


def _wait(ok: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up within {timeout}s")


class DataPostgres:
    """A PostgreSQL cluster run as the postgres user inside the data namespace."""

    def __init__(self, net: Network, root: Path) -> None:
        self.net = net
        # its own folder, not under the run's: pytest's tmp root is 0700 and the postgres user must get in
        self.dir = Path(tempfile.mkdtemp(prefix="medic-nemesis-pg-"))
        self.dir.chmod(0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.bin = pg_bin()
        self.addr = net.hosts["data"].addr
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
             "-U", "postgres", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        with open(self.data / "pg_hba.conf", "a") as hba:  # initdb trusts loopback only; the hosts are 10.199/16
            hba.write("host all all 10.199.0.0/16 trust\n")

    def url(self, host: str | None = None) -> str:
        """Over the network (`host`: the data host's address) or, by default, over the unix socket."""
        if host:
            return f"postgresql+psycopg2://postgres@{host}:{PG_PORT}/medic"
        return f"postgresql+psycopg2://postgres@/medic?host={self.dir}&port={PG_PORT}"

    def _ctl(self, *args: str) -> None:
        options = (
            f"-p {PG_PORT} -k {self.dir} -c listen_addresses={self.addr} -c fsync=off -c max_connections=300 "
            "-c synchronous_commit=on"
        )
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60", *args]
        subprocess.run(
            self.net.exec_argv("data", ["runuser", "-u", "postgres", "--", *argv]),
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip

    def start(self) -> None:
        self._ctl("-l", str(self.dir / "server.log"), "start")

    def stop(self, mode: str = "fast") -> None:
        """`mode`: fast (connections ended, clean checkpoint) or immediate (like a crash)."""
        self._ctl("-m", mode, "stop")

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


class DataRedis:
    """A redis-server without persistence inside the data namespace (a restart loses every queued
    message, as a Redis without AOF would)."""

    def __init__(self, net: Network, root: Path) -> None:
        self.net = net
        self.dir = root / "redis"
        self.dir.mkdir(parents=True)
        self.socket = self.dir / "redis.sock"
        self.addr = net.hosts["data"].addr
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, host: str | None = None) -> str:
        return f"redis://{host}:{REDIS_PORT}/0" if host else f"unix://{self.socket}?db=0"

    def client(self) -> redis.Redis[bytes]:
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)

    def start(self) -> None:
        argv = [
            "redis-server", "--port", str(REDIS_PORT), "--bind", self.addr, "--save", "", "--appendonly", "no",
            "--dir", str(self.dir), "--unixsocket", str(self.socket), "--unixsocketperm", "777",
            "--maxclients", "2000", "--protected-mode", "no",  # reachable only inside the run's namespaces
        ]  # fmt: skip
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(self.net.exec_argv("data", argv), stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def up() -> bool:
            try:
                return bool(self.client().ping())
            except redis.RedisError:
                return False

        _wait(up, "redis")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(redis.RedisError):
                self.client().shutdown(nosave=True)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def destroy(self) -> None:
        self.stop()
