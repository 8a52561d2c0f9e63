"""PerProcess: one value per process and key; a forked child makes its own, and its lock is fresh."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from worker.forksafe import PerProcess


def test_a_value_is_made_once_per_key_and_the_replaced_one_is_closed() -> None:
    made: list[str] = []
    closed: list[str] = []
    holder: PerProcess[str, str] = PerProcess(lambda key: made.append(key) or f"value-{key}", close=closed.append)

    assert holder.get("a") == "value-a"
    assert holder.get("a") == "value-a"
    assert made == ["a"], "the same key must not make a second value"
    assert holder.get("b") == "value-b"
    assert closed == ["value-a"], "a value replaced in the process that made it is closed"
    holder.clear()
    assert closed == ["value-a", "value-b"]
    assert holder.peek() is None


def _in_child(check: Callable[[], bool]) -> int:
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only, never return into pytest
        try:
            os._exit(0 if check() else 1)
        except BaseException:  # noqa: BLE001 - any error in the child is a failed check
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_makes_its_own_value_and_never_closes_the_parents() -> None:
    closed: list[object] = []
    holder: PerProcess[str, object] = PerProcess(lambda key: object(), close=closed.append)
    parent_value = holder.get("k")

    def child_sees_a_new_value() -> bool:
        return holder.peek() is None and holder.get("k") is not parent_value and not closed

    assert _in_child(child_sees_a_new_value) == 0
    assert holder.get("k") is parent_value


def test_a_lock_held_by_another_thread_at_fork_does_not_deadlock_the_child() -> None:
    holder: PerProcess[str, str] = PerProcess(lambda key: key)
    release = threading.Event()
    held = threading.Event()

    def hold_the_lock() -> None:
        with holder._lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold_the_lock)
    thread.start()
    held.wait(5)
    try:
        # Without the after-fork reset the child would block for ever on the inherited lock;
        # an alarm turns that into a non-zero exit instead of a hung test.
        def child_gets_a_value() -> bool:
            import signal

            signal.alarm(5)
            return holder.get("x") == "x"

        assert _in_child(child_gets_a_value) == 0
    finally:
        release.set()
        thread.join()
