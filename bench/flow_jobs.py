"""The job types of bench/flow.py: one no-op body under each flow-control option, so what differs
between them is the path a job takes (fast path or dispatcher), never the work. Loaded by the
bench's workers through MEDIC_JOB_MODULES; nothing else imports it."""

from __future__ import annotations

import time
from typing import Any

from worker.runtime.registry import job


@job("flowbench.noop")
def noop(n: int) -> dict[str, int]:
    """No limits: the fast path on a plain queue, the dispatcher on a dispatched (fair) one."""
    return {"n": n}


@job("flowbench.keyed", concurrency_key="k", concurrency_limit=100)
def keyed(n: int, k: str) -> dict[str, int]:
    """A keyed limit of 100 that the bench never reaches (each job its own key)."""
    return {"n": n}


@job("flowbench.rated", rate_limit="100000/s")
def rated(n: int) -> dict[str, int]:
    """A rate limit far above any rate the bench reaches."""
    return {"n": n}


@job("flowbench.rate50", rate_limit="50/s")
def rate50(n: int) -> dict[str, int]:
    """The accuracy side: at most 50 starts a second across every worker."""
    return {"n": n}


@job("flowbench.capped", concurrency_key="k", concurrency_limit=3)
def capped(n: int, k: str, seconds: float) -> dict[str, Any]:
    """The accuracy side: at most 3 of one key at once; sleeps so that runs can overlap."""
    started = time.time()
    time.sleep(seconds)
    return {"n": n, "started": started, "ended": time.time()}
