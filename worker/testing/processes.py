"""Real processes for tests and benches: celery workers and uvicorn, started with one run's
environment, each in its own process group, stopped by PID at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx

from worker.ops import processes
from worker.ops.stack import free_port

T = TypeVar("T")

__all__ = ["Proc", "Processes", "free_port", "wait_for"]


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> T:
    """Poll until `predicate()` is truthy; return it. Never a bare sleep in a test."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")


class Proc:
    """One real process in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{time.time_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def children(self) -> list[int]:
        """PIDs of this process's children (the prefork pool)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            return []

    def kill_group(self, sig: signal.Signals = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.kill_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_group(signal.SIGKILL)
                self.popen.wait(timeout=5)
        self.kill_group(signal.SIGKILL)  # prefork children that outlived their parent
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Processes:
    """Starts real medic processes for one test (or session) and stops them all afterwards."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], **extra_env: str) -> Proc:
        proc = Proc(name, argv, {**self.env, **extra_env}, self.log_dir)
        self.procs.append(proc)
        return proc

    def _celery(self, name: str, argv: list[str], **env: str) -> Proc:
        proc = self.start(name, argv, **env)
        with self._stopped_on_failure(proc):
            wait_for(lambda: "ready." in proc.log() or not proc.alive(), 30, 0.1, f"{name} ready")
            assert proc.alive(), proc.log()
        return proc

    @contextlib.contextmanager
    def _stopped_on_failure(self, proc: Proc) -> Iterator[None]:
        """A process that never became ready is stopped at once: a fixture that fails before its
        `yield` never reaches its teardown, and the process would outlive the test run."""
        try:
            yield
        except BaseException:
            proc.stop()
            self.procs.remove(proc)
            raise

    def worker(self, name: str, queues: str = "default", concurrency: int = 2, **env: str) -> Proc:
        return self._celery(name, processes.worker_cmd(queues, concurrency, name, "INFO"), **env)

    def control(self, name: str = "control", **env: str) -> Proc:
        return self._celery(name, processes.control_cmd(name, "INFO"), **env)

    def beat(self, name: str = "beat", **env: str) -> Proc:
        return self.start(name, processes.beat_cmd("INFO"), **env)

    def control_plane(self, **env: str) -> tuple[Proc, Proc]:
        """A control worker and beat: the control loops, running on their schedule."""
        return self.control(**env), self.beat(**env)

    def http_server(self, name: str, argv: list[str], url: str, **env: str) -> Proc:
        """Start an HTTP server and wait until its /health/live answers."""
        proc = self.start(name, argv, **env)

        def up() -> bool:
            if not proc.alive():
                return True
            try:
                return httpx.get(f"{url}/health/live", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        with self._stopped_on_failure(proc):
            wait_for(up, 30, 0.1, f"{name} up")
            assert proc.alive(), proc.log()
        return proc

    def api(self, name: str = "api", **env: str) -> tuple[Proc, str]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        return self.http_server(name, processes.api_cmd("127.0.0.1", port), url, **env), url

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
