"""`medic up`: run every piece of the stack as supervised child processes.

A child that dies is restarted with back-off and logged; SIGINT/SIGTERM stop every child (its
whole process group, so prefork children go too) and wait for them, escalating to SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("medic.up")

STOP_GRACE_S = 10.0
HEALTHY_AFTER_S = 30.0
MAX_BACKOFF_S = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = 1.0
    restart_at: float | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env={**os.environ, **self.env}, start_new_session=True)
        self.started = time.monotonic()
        self.restart_at = None
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def signal_group(self, sig: signal.Signals, *, stragglers: bool = False) -> None:
        """Signal the child's process group; `stragglers` also after the leader has exited."""
        if self.proc is not None and (stragglers or self.proc.poll() is None):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)


class Supervisor:
    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self._stopping = False

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self._stopping = True

    def add(self, child: Child) -> None:
        self.children.append(child)
        child.start()

    def remove(self, name: str) -> None:
        for child in [c for c in self.children if c.name == name]:
            self._stop_children([child])
            self.children.remove(child)

    def start_all(self) -> None:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        for child in self.children:
            child.start()

    def tick(self) -> None:
        """Restart any child that died; called about twice a second."""
        now = time.monotonic()
        for child in self.children:
            proc = child.proc
            if proc is None or proc.poll() is None:
                continue
            if child.restart_at is None:
                if now - child.started > HEALTHY_AFTER_S:
                    child.backoff = 1.0
                child.restart_at = now + child.backoff
                log.warning(
                    "%s (pid %d) exited with code %s; restarting in %.0fs",
                    child.name, proc.pid, proc.returncode, child.backoff,
                )  # fmt: skip
                child.backoff = min(child.backoff * 2, MAX_BACKOFF_S)
            elif now >= child.restart_at:
                child.restarts += 1
                child.start()

    def run(self, on_tick: Sequence[Callable[[], None]] = ()) -> None:
        while not self._stopping:
            self.tick()
            for hook in on_tick:
                try:
                    hook()
                except Exception:
                    log.exception("supervisor hook failed")
            time.sleep(0.5)
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def request_stop(self) -> None:
        self._stopping = True

    def stop(self) -> None:
        self._stop_children(self.children)

    @staticmethod
    def _stop_children(children: list[Child]) -> None:
        for child in children:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs: SIGKILL", child.name, STOP_GRACE_S)
                child.signal_group(signal.SIGKILL)
                child.proc.wait()
            # prefork children left in the group after their parent exited
            child.signal_group(signal.SIGKILL, stragglers=True)
            log.info("stopped %s", child.name)
