"""The nemesis's job: a history of each execution written OUTSIDE the ledger, on the job's own host.

`nemesis.tick` appends one JSON line per event to `<log_dir>/hosts/<host>/history.jsonl` (opened
O_APPEND, one write(2) per line, so lines of concurrent processes never interleave): `start`, a
`tick` every ~50 ms, `end` (or `fenced` if the worker says it no longer owns the job). Each line
carries the job id, attempt (when known), delivery id, host, pid, time.time() and
time.monotonic(). The checker (tests/nemesis/checker.py) rebuilds each execution's live interval
from these lines, so a second execution of one job is seen whatever the ledger believes.

Each tick is guarded by `worker.runtime.fencing.still_owner()` where that module exists (issue 19's
self-fencing); on code without it the guard is always true, which is exactly what lets the checker
show the overlap such code allows."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import celery

from worker.runtime.registry import job

TICK_S = 0.05

try:  # the self-fencing API of issue 19, when this code has it
    from worker.runtime import fencing as _fencing  # type: ignore[attr-defined,unused-ignore]

    still_owner: Callable[[], bool] = _fencing.still_owner
    FENCING = True
except ImportError:  # today's code: nothing to ask, so always "yes"

    def still_owner() -> bool:
        return True

    FENCING = False


def _token() -> tuple[str, str, int | None]:
    """(job id, delivery id, attempt): the fencing token if there is one, else the Celery request
    (args are (job_id, delivery_id); the attempt is then left to the checker, which reads it from
    the ledger's `claimed` event of that delivery)."""
    request = celery.current_task.request if celery.current_task else None
    job_id, delivery = ("", "")
    if request is not None and request.args:
        job_id, delivery = str(request.args[0]), str(request.args[1])
    if FENCING:
        try:
            token: Any = _fencing.fencing_token()
            attempt = getattr(token, "attempt", None)
            delivery = str(getattr(token, "delivery_id", None) or delivery)
            return job_id, delivery, int(attempt) if attempt is not None else None
        except Exception:  # noqa: BLE001 - the history must be written whatever the token API says
            pass
    return job_id, delivery, None


class History:
    """One execution's lines, appended to its host's file."""

    def __init__(self, log_dir: str) -> None:
        self.host = os.environ.get("NEMESIS_HOST", "unknown")
        folder = os.path.join(log_dir, "hosts", self.host)
        os.makedirs(folder, exist_ok=True)
        self.fd = os.open(os.path.join(folder, "history.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.job, self.delivery, self.attempt = _token()

    def line(self, event: str, **extra: Any) -> None:
        entry = {
            "event": event, "job": self.job, "delivery": self.delivery, "attempt": self.attempt,
            "host": self.host, "pid": os.getpid(), "t": time.time(), "mono": time.monotonic(), **extra,
        }  # fmt: skip
        os.write(self.fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


@job("nemesis.tick", backoff=0.5, max_attempts=10)
def tick(seconds: float, log_dir: str) -> dict[str, Any]:
    """Run for `seconds`, a line every ~50 ms; stop at once (before finishing) if no longer owner."""
    history = History(log_dir)
    try:
        history.line("start")
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            time.sleep(TICK_S)
            if not still_owner():
                history.line("fenced", n=n)
                raise RuntimeError("no longer the owner of this job: stopped before finishing")
            n += 1
            history.line("tick", n=n)
        history.line("end", n=n)
        return {"ticks": n, "pid": os.getpid(), "host": history.host}
    finally:
        history.close()
