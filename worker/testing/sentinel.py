"""A Redis master, one replica and three Sentinels of a test's own, on free loopback ports, so a
test can kill the master and watch the Sentinels promote the replica (docs/deploy.md recommends
this topology).

The replica authenticates as its own ACL user, so a test can cut replication on purpose
(`cut_replication`): writes after the cut live on the master only, and a failover then loses
them, as asynchronous replication does under load. Debian ships Sentinel as `redis-sentinel`
(package redis-sentinel); without it, `redis-server --sentinel` is the same program.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from worker.ops.stack import free_port

MASTER_NAME = "medic"
REPLICATION_USER = "replicator"
REPLICATION_PASSWORD = "replication-pw-of-this-test"  # a throwaway server's


def sentinel_argv(conf: Path) -> list[str]:
    if binary := shutil.which("redis-sentinel"):
        return [binary, str(conf)]
    return ["redis-server", str(conf), "--sentinel"]


def _wait(predicate: object, what: str, timeout: float) -> None:
    """Poll `predicate` (a callable) until truthy; connection errors count as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if predicate():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise RuntimeError(f"sentinel cluster: timed out after {timeout}s waiting for {what}")


class Server:
    """One redis-server (or Sentinel) process on 127.0.0.1:<port>, logging into its folder."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.port = free_port()
        self.dir = root / name
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str]) -> None:
        with open(self.dir / "server.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: self.client().ping(), f"{self.name} to answer", 10)

    def client(self) -> redis.Redis[str]:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def named_master(self) -> int:
        """The master's port as this Sentinel names it."""
        _, port = self.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)


class SentinelCluster:
    """Master + replica + Sentinels; `url` and `env()` are what medic is pointed at."""

    def __init__(self, sentinels: int = 3, down_after_ms: int = 1000) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="medic-sentinel-"))
        self.master = Server("master", self.root)
        self.replica = Server("replica", self.root)
        self.sentinels = [Server(f"sentinel-{i}", self.root) for i in range(sentinels)]
        self.down_after_ms = down_after_ms

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in self.sentinels)

    def env(self) -> dict[str, str]:
        return {"MEDIC_REDIS_URL": self.url, "MEDIC_REDIS_SENTINEL_MASTER": MASTER_NAME}

    def _redis_argv(self, server: Server) -> list[str]:
        return [
            "redis-server", "--port", str(server.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(server.dir), "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
            "--user", REPLICATION_USER, "on", f">{REPLICATION_PASSWORD}", "+psync", "+replconf", "+ping",
        ]  # fmt: skip

    def start(self) -> SentinelCluster:
        """Start the master, then the replica (in sync), then the Sentinels (each seeing the
        replica and the other Sentinels), so a failover can happen from the first second."""
        self.master.start(self._redis_argv(self.master))
        self.replica.start(
            [*self._redis_argv(self.replica), "--replicaof", "127.0.0.1", str(self.master.port),
             "--masteruser", REPLICATION_USER, "--masterauth", REPLICATION_PASSWORD]
        )  # fmt: skip
        _wait(self._in_sync, "the replica to sync", 20)
        for sentinel in self.sentinels:
            sentinel.start(sentinel_argv(self._sentinel_conf(sentinel)))
        _wait(self._sentinels_ready, "every Sentinel to see the replica and the others", 30)
        return self

    def _in_sync(self) -> bool:
        return str(self.replica.client().info("replication").get("master_link_status")) == "up"

    def _sentinel_conf(self, sentinel: Server) -> Path:
        conf = sentinel.dir / "sentinel.conf"
        conf.write_text(
            f"port {sentinel.port}\nbind 127.0.0.1\ndir {sentinel.dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            # a split vote is tried again after twice this: seconds, not Sentinel's default minutes
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        return conf

    def _sentinels_ready(self) -> bool:
        others = len(self.sentinels) - 1
        for sentinel in self.sentinels:
            state = sentinel.client().sentinel_master(MASTER_NAME)  # type: ignore[no-untyped-call]
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < others:
                return False
        return True

    def master_port(self) -> int:
        """The master's port as the Sentinels name it (the first that answers)."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                return sentinel.named_master()
        raise RuntimeError("no Sentinel answers")

    def cut_replication(self) -> None:
        """Stop the master feeding the replica (its user switched off, its link closed): every
        write from now on exists on the master only."""
        client = self.master.client()
        client.acl_setuser(REPLICATION_USER, enabled=False)
        client.client_kill_filter(user=REPLICATION_USER)

    def kill_master(self) -> None:
        self.master.kill(signal.SIGKILL)

    def wait_failover(self, timeout: float = 60) -> int:
        """Wait until every Sentinel names the replica as master and it acts as one; its port."""

        def promoted() -> bool:
            named = {s.named_master() for s in self.sentinels}
            return named == {self.replica.port} and self.replica.client().info("replication")["role"] == "master"

        _wait(promoted, "the Sentinels to promote the replica", timeout)
        return self.replica.port

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.kill(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
