"""The background-thread helper: its error policy, its stop, its period (events, no sleeps)."""

from __future__ import annotations

import logging
import threading

import pytest

from worker.background import BackgroundThread


def test_a_failing_step_is_logged_and_the_loop_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    """Bug caught: an exception that ends the thread (a Redis blip would stop a heartbeat for good)."""
    calls: list[int] = []
    third = threading.Event()

    def step() -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError("redis down")
        third.set()

    thread = BackgroundThread("medic-test-failing", step, every_s=0)
    with caplog.at_level(logging.INFO, logger="worker.background"):
        thread.start()
        assert third.wait(5), "the step ran again after it raised"
        thread.stop()
        assert thread.join(5)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("medic-test-failing failed") and caplog.records[0].exc_info
    assert messages[1] == "medic-test-failing failed again: ConnectionError: redis down"
    assert not caplog.records[1].exc_info, "a streak logs its traceback once"
    assert "medic-test-failing recovered" in messages


def test_stop_ends_the_thread_during_its_wait() -> None:
    """Bug caught: a wait that is a plain sleep (stop would wait out an hour's period)."""
    ran = threading.Event()
    thread = BackgroundThread("medic-test-stop", ran.set, every_s=3600).start()
    assert ran.wait(5)
    assert not thread.join(0), "still waiting out its period"
    thread.stop()
    assert thread.join(5), "stopped in the middle of its wait"
    assert thread.stopping


def test_the_thread_is_named_and_a_daemon() -> None:
    gate = threading.Event()
    seen: list[threading.Thread] = []

    def step() -> None:
        seen.append(threading.current_thread())
        gate.set()

    thread = BackgroundThread("medic-test-named", step, every_s=3600).start()
    try:
        assert gate.wait(5)
        assert seen[0].name == "medic-test-named" and seen[0].daemon
    finally:
        thread.stop()
        thread.join(5)


class _Paced(BackgroundThread):
    """The loop's wait, observed: each pause records its length and holds until the test lets go."""

    def __init__(self, every_s: float) -> None:
        super().__init__("medic-test-paced", self._count, every_s=every_s)
        self.runs = 0
        self.pauses: list[float] = []
        self.paused = threading.Event()
        self.release = threading.Event()

    def _count(self) -> None:
        self.runs += 1

    def pause(self, seconds: float) -> bool:
        self.pauses.append(seconds)
        self.paused.set()
        self.release.wait(5)
        self.release.clear()
        return self.stopping


def test_each_run_is_followed_by_a_wait_of_the_period() -> None:
    """Bug caught: a loop that spins (no wait), or waits a different time than it was given."""
    thread = _Paced(every_s=7.5).start()
    for run in (1, 2, 3):
        assert thread.paused.wait(5)
        thread.paused.clear()
        assert thread.runs == run and thread.pauses == [7.5] * run, "one run, then one wait of the period"
        if run == 3:
            thread.stop()
        thread.release.set()
    assert thread.join(5)
    assert thread.runs == 3, "nothing runs after the stop"


def test_first_after_delays_the_first_step_and_a_stop_in_it_ends_the_thread() -> None:
    """Bug caught: `first_after_s` ignored (the control worker's watchdog would run the health loop
    the moment it starts, racing beat's first run)."""
    ran = threading.Event()
    thread = BackgroundThread("medic-test-first-after", ran.set, every_s=0, first_after_s=3600).start()
    assert not ran.wait(0.2), "the first step waits its delay"
    thread.stop()
    assert thread.join(5), "a stop during the first delay ends the thread"
    assert not ran.is_set()
    soon = threading.Event()
    quick = BackgroundThread("medic-test-first-soon", soon.set, every_s=3600, first_after_s=0.01).start()
    try:
        assert soon.wait(5), "after its delay the step runs"
    finally:
        quick.stop()
