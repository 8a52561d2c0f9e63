"""One shape for every background thread of a medic process: a named daemon thread that runs a
step, waits its period, and runs it again until stopped.

One error policy for all of them: a step that raises is logged and the loop carries on at its next
period, so a Redis or ledger outage pauses the work and never ends it. The first failure of a
streak is logged with its traceback, the rest of the streak in one line each, and the first
success after it says the thread recovered: an outage that lasts an hour does not fill the log
with the same traceback every second. The stop is an event, so `stop()` ends the wait at once
(tests stop a thread without waiting out its period).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Self

log = logging.getLogger(__name__)


class BackgroundThread:
    """Runs `step` after `first_after_s` (at once by default), then again `every_s` seconds after
    each run ends, until `stop()`."""

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        *,
        every_s: float,
        first_after_s: float = 0.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self.every_s = every_s
        self.first_after_s = first_after_s
        self._step = step
        self._log = logger or log
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set by stop() and wake(): the wait between steps ends
        self._failing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the loop to end: a wait in progress ends at once, a step in progress finishes."""
        self._stopping.set()
        self._wake.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def pause(self, seconds: float) -> bool:
        """Wait `seconds` unless stopped or woken first; True when stopped (a step's own back-off
        uses it)."""
        if self._wake.wait(seconds):
            self._wake.clear()
            if self._stopping.is_set():
                self._wake.set()  # every later pause ends at once too
        return self._stopping.is_set()

    def run_once(self) -> None:
        """One step under the error policy (the loop's body)."""
        try:
            self._step()
        except Exception as exc:  # noqa: BLE001 - the policy: logged, and the loop carries on
            if self._failing:
                self._log.warning("%s failed again: %s: %s", self.name, type(exc).__name__, exc)
            else:
                self._log.warning("%s failed; it carries on every %g s", self.name, self.every_s, exc_info=True)
            self._failing = True
            return
        if self._failing:
            self._failing = False
            self._log.info("%s recovered", self.name)

    def wake(self) -> None:
        """Run the next step now instead of at the end of the period (safe from a signal handler:
        it only sets an event)."""
        self._wake.set()

    def _run(self) -> None:
        if self.first_after_s > 0 and self.pause(self.first_after_s):
            return
        while not self._stopping.is_set():
            self.run_once()
            if self.pause(self.every_s):
                return
