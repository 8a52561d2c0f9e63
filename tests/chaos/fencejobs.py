"""A job that writes its own history OUTSIDE the ledger, for the fencing tests: a JSON line per
event (`start`, a `tick` every 20 ms, `end`), one write(2) each to a file opened O_APPEND.

`guarded=True` asks `still_owner()` before each tick, as a job with external side effects should;
`guarded=False` is a naive job that never asks, so only the fence's kill can stop it."""

from __future__ import annotations

import json
import os
import time

import celery

from worker.runtime import fencing
from worker.runtime.registry import job

TICK_S = 0.02


def _line(fd: int, event: str, delivery: str) -> None:
    entry = {"event": event, "delivery": delivery, "pid": os.getpid(), "t": time.time()}
    os.write(fd, (json.dumps(entry) + "\n").encode())


@job("fence.tick", backoff=0.2, max_attempts=5)
def tick(seconds: float, history: str, guarded: bool) -> int:
    request = celery.current_task.request if celery.current_task else None
    delivery = str(request.args[1]) if request is not None and request.args else ""
    fd = os.open(history, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _line(fd, "start", delivery)
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            time.sleep(TICK_S)
            if guarded and not fencing.still_owner():
                raise RuntimeError("no longer the owner: stopped before the next side effect")
            n += 1
            _line(fd, "tick", delivery)
        _line(fd, "end", delivery)
        return n
    finally:
        os.close(fd)
