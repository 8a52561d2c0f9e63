"""Example jobs for the README's tour, `medic up` and the tests; refused under MEDIC_PROFILE=production
(worker/settings.py) unless MEDIC_ALLOW_EXAMPLE_JOBS is set."""

from __future__ import annotations

import os
import time
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded

from worker.runtime.current import current_job
from worker.runtime.registry import job


@job("examples.echo")
def echo(message: str) -> dict[str, str]:
    """Return its input."""
    return {"message": message}


@job("examples.sleep")
def sleep(seconds: float) -> dict[str, float]:
    """Sleep, then return how long it slept."""
    started = time.monotonic()
    time.sleep(seconds)
    return {"slept": round(time.monotonic() - started, 3)}


@job("examples.fail", backoff=0.5)
def fail(message: str = "failed on purpose") -> None:
    """Always raise."""
    raise RuntimeError(message)


@job("examples.crash", backoff=0.0)
def crash() -> None:
    """Kill its own process, as a segfault or an OOM kill would."""
    os._exit(13)


@job("examples.hang", timeout=30.0)
def hang() -> None:
    """Loop forever, swallowing the soft time limit: only a hard kill ends it."""
    while True:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            continue


@job("examples.merge")
def merge(results: dict[str, Any]) -> dict[str, Any]:
    """A workflow's fan-in (docs/workflows.md): the results of the steps it waited for, by name."""
    return {"merged": {name: results[name] for name in sorted(results)}}


@job("examples.steps")
def steps(steps: int, seconds_per_step: float) -> dict[str, int]:
    """Work in `steps` steps, reporting progress after each; a cancel request ends it between
    steps (it returns how many steps it did)."""
    me = current_job()
    done = 0
    for done in range(1, steps + 1):
        time.sleep(seconds_per_step)
        me.progress(done / steps, f"step {done} of {steps}")
        if me.cancelled():
            break
    return {"steps": done}


@job("examples.per_account", concurrency_key="account", concurrency_limit=1)
def per_account(account: str, seconds: float) -> dict[str, Any]:
    """One account's work at a time (keyed concurrency, docs/flow.md): jobs of one account never
    overlap, across every worker; other accounts' run beside them."""
    started = time.time()
    time.sleep(seconds)
    return {"account": account, "started": started, "ended": time.time()}


@job("examples.throttled", rate_limit="5/s")
def throttled(n: int) -> dict[str, Any]:
    """Starts at most 5 times a second across every worker (a global rate limit, docs/flow.md)."""
    return {"n": n, "started": time.time()}
