"""Jobs of the warm-shutdown tests (tests/chaos/test_shutdown.py), loaded by their workers."""

from __future__ import annotations

from tests.testjobs import get_redis
from worker.runtime.registry import job
from worker.settings import get_settings

RETRY_BACKOFF_S = 4.0  # long enough that the retry's message waits, prefetched, in its worker


@job("shutdown.fail_once", backoff=RETRY_BACKOFF_S)
def fail_once(tag: str) -> str:
    """Fail the first attempt (its retry is published with an ETA RETRY_BACKOFF_S later), then succeed."""
    n = get_redis().incr(f"{get_settings().key_prefix}test:fail-once:{tag}")
    if n == 1:
        raise ValueError("the first attempt fails")
    return f"succeeded on run {n}"
