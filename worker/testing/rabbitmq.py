"""RabbitMQ for tests: a vhost of one run's own on the shared server, and a private node a test
may crash (SIGKILL of its VM) and restart, on free ports, with nothing of the shared node's
configuration (its listener, its plugins).

`rabbitmq-server` as root runs the node as the `rabbitmq` user (Debian's wrapper), so the
node's folders are handed to that user; `rabbitmqctl` reaches a node by name through epmd."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from worker.ops.stack import free_port

SHARED_PORT = 5672
CTL_TIMEOUT_SECONDS = 60


def rabbitmqctl(*args: str, node: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One `rabbitmqctl` command (on the shared node unless `node` is named)."""
    argv = ["rabbitmqctl", *(["-n", node] if node else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=CTL_TIMEOUT_SECONDS)


def amqp_url(vhost: str = "", port: int = SHARED_PORT) -> str:
    """The broker URL of `vhost` ("" is the default vhost `/`)."""
    return f"amqp://guest:guest@127.0.0.1:{port}/{vhost}"


def add_vhost(name: str) -> str:
    """Create `name` on the shared node with every permission for guest; returns its URL."""
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return amqp_url(name)


def delete_vhost(name: str) -> None:
    """Delete `name` and everything in it (queues, exchanges, messages)."""
    rabbitmqctl("delete_vhost", name, check=False)


class PrivateRabbit:
    """A RabbitMQ node of this test's own: `start`, `crash` (SIGKILL of the VM), `start` again on
    the same ports and data (what it confirmed is on disk), `destroy`."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="medic-rabbit-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"medic{uuid.uuid4().hex[:10]}@localhost"
        (self.dir / "enabled_plugins").write_text("")
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        for folder in ("mnesia", "log"):
            (self.dir / folder).mkdir()
        if os.geteuid() == 0:  # the wrapper runs the node as `rabbitmq`
            for path in (self.dir, *self.dir.rglob("*")):
                shutil.chown(path, "rabbitmq", "rabbitmq")

    @property
    def url(self) -> str:
        return amqp_url("", self.port)

    @property
    def pid_file(self) -> Path:
        return self.dir / "beam.pid"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
        }

    def start(self, timeout: float = 60.0) -> None:
        """Start the node and wait until it has booted (epmd knows it only a moment after)."""
        self.pid_file.unlink(missing_ok=True)
        subprocess.run(
            ["rabbitmq-server", "-detached"], env=self.env(), cwd=self.dir, check=True, capture_output=True, timeout=60
        )
        deadline = time.monotonic() + timeout
        while True:
            if rabbitmqctl("await_startup", "--timeout", "30", node=self.node, check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"private RabbitMQ {self.node} did not start: see {self.dir / 'log'}")
            time.sleep(0.2)

    def beam_pid(self) -> int:
        return int(self.pid_file.read_text().strip())

    def crash(self) -> None:
        """SIGKILL the node's Erlang VM: no clean shutdown, what it confirmed must be on disk."""
        pid = self.beam_pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the VM's parent is init: gone once it reaps the zombie

    def stop(self) -> None:
        rabbitmqctl("stop", node=self.node, check=False)

    def destroy(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            self.crash()
        shutil.rmtree(self.dir, ignore_errors=True)
