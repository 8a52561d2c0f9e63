"""Jobs for the cancel and progress tests, each writing its own history OUTSIDE the ledger: a JSON
line per event (one write(2) each to a file opened O_APPEND), so a check can see what the job did
after the request, which no write in the ledger can tidy up."""

from __future__ import annotations

import json
import os
import time

from worker import current_job, job

TICK_S = 0.02


def _line(history: str, event: str) -> None:
    fd = os.open(history, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps({"event": event, "pid": os.getpid(), "t": time.time()}) + "\n").encode())
    finally:
        os.close(fd)


@job("cancel.naive", max_attempts=3)
def naive(seconds: float, history: str) -> str:
    """Never asks `cancelled()`: only the worker's kill after the grace can stop it early."""
    _line(history, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(TICK_S)
        _line(history, "tick")
    _line(history, "end")
    return "ran to its end"


@job("cancel.cooperative", max_attempts=3)
def cooperative(seconds: float, history: str, cleanup_s: float) -> str:
    """Polls `cancelled()`; once it says so, cleans up (`cleanup_s`) and returns."""
    me = current_job()
    _line(history, "start")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(TICK_S)
        if me.cancelled():
            _line(history, "cancel_seen")
            time.sleep(cleanup_s)
            _line(history, "cleaned_up")
            return "stopped cleanly"
    _line(history, "end")
    return "ran to its end"


@job("cancel.chatty")
def chatty(calls: int, over_s: float, then_s: float) -> int:
    """Reports progress `calls` times spread over `over_s`, then runs `then_s` more."""
    me = current_job()
    for i in range(1, calls + 1):
        me.progress(i / calls, f"call {i}")
        time.sleep(over_s / calls)
    time.sleep(then_s)
    return calls
