"""The tenant quota: how many queued jobs one tenant may have, checked when jobs are accepted."""

from __future__ import annotations

import time

from worker.errors import TenantQuotaError
from worker.ledger import db, queries
from worker.settings import get_settings

_quota_cache: dict[str, tuple[int, float]] = {}
QUOTA_CACHE_S = 1.0


def _queued_count(tenant: str, quota: int) -> int:
    """The tenant's queued jobs (counted up to quota + 1), cached for a second per process:
    the count costs in proportion to the backlog, and a quota is a guard rail, not a fence."""
    hit = _quota_cache.get(tenant)
    if hit is not None and hit[1] > time.monotonic():
        return hit[0]
    with db.connect() as conn:
        queued = queries.tenant_queued(conn, tenant, up_to=quota + 1)
    _quota_cache[tenant] = (queued, time.monotonic() + QUOTA_CACHE_S)
    return queued


def check_tenant_quota(tenant: str, n: int) -> None:
    """Count `n` more jobs against the tenant's quota.

    Raises:
        TenantQuotaError: the tenant's queued jobs plus `n` would pass its quota.
    """
    s = get_settings()
    quota = s.tenant_queued_quota
    queued = _queued_count(tenant, quota)
    if queued + n > quota:
        raise TenantQuotaError(
            f"tenant {tenant!r} has {queued} queued jobs; its quota is {quota}",
            queued=queued,
            quota=quota,
            retry_after=min(30, s.retry_after_max_seconds),
        )
    hit = _quota_cache.get(tenant)
    if hit is not None:  # count what this process admits until the next real count
        _quota_cache[tenant] = (hit[0] + n, hit[1])
