"""The tenant's limits on waiting jobs (queued, or held for the dispatcher), checked when jobs are
accepted: its quota over every queue (its own in `MEDIC_TENANT_LIMITS`, else
`MEDIC_TENANT_QUEUED_QUOTA`), and its share of each queue (`MEDIC_TENANT_QUEUE_SHARE` of the
queue's high watermark), so that one tenant can never fill a queue and get every other tenant
429s: while it is refused, the queue keeps room below its watermark for the others."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence

from worker.accept.admission import watermarks
from worker.errors import TenantQuotaError
from worker.ledger import db, queries
from worker.ledger.records import NewJob
from worker.settings import Settings, get_settings

# (tenant, queue or None for every queue) -> (waiting jobs, valid until)
_quota_cache: dict[tuple[str, str | None], tuple[int, float]] = {}
QUOTA_CACHE_S = 1.0


def _queued_count(tenant: str, queue: str | None, up_to: int) -> int:
    """The tenant's waiting jobs, queued or held (in `queue`, or in all), counted up to `up_to`, cached for a
    second per process: the count costs in proportion to the backlog, and a quota is a guard
    rail, not a fence."""
    hit = _quota_cache.get((tenant, queue))
    if hit is not None and hit[1] > time.monotonic():
        return hit[0]
    with db.connect() as conn:
        queued = queries.tenant_queued(conn, tenant, up_to=up_to, queue=queue)
    _quota_cache[(tenant, queue)] = (queued, time.monotonic() + QUOTA_CACHE_S)
    return queued


def _counted(tenant: str, queue: str | None, n: int) -> None:
    """Count what this process admits until the next real count."""
    hit = _quota_cache.get((tenant, queue))
    if hit is not None:
        _quota_cache[(tenant, queue)] = (hit[0] + n, hit[1])


def queue_share(queue: str, s: Settings | None = None) -> int | None:
    """The most jobs one tenant may have queued in `queue`: its share of the queue's high
    watermark (at least 1); None when the share is 1 (no cap of its own: the watermark is)."""
    s = s or get_settings()
    if s.tenant_queue_share >= 1:
        return None
    return max(1, math.floor(watermarks(queue, s).high * s.tenant_queue_share))


def check_tenant_quota(tenant: str, news: Sequence[NewJob]) -> None:
    """Count `news` against the tenant's quota and its share of each of their queues.

    Raises:
        TenantQuotaError: the tenant's waiting jobs plus the new ones would pass its quota, or its
            share of one of their queues (`queue` and `share` in the details).
    """
    s = get_settings()
    retry_after = min(30, s.retry_after_max_seconds)
    quota, source = s.tenant_queued_cap(tenant)
    queued = _queued_count(tenant, None, quota + 1)
    if queued + len(news) > quota:
        raise TenantQuotaError(
            f"tenant {tenant!r} has {queued} queued or held jobs; its quota is {quota} ({source})",
            queued=queued,
            quota=quota,
            retry_after=retry_after,
        )
    per_queue = Counter(new.queue for new in news)
    for queue, n in per_queue.items():
        share = queue_share(queue, s)
        if share is None:
            continue
        in_queue = _queued_count(tenant, queue, share + 1)
        if in_queue + n > share:
            raise TenantQuotaError(
                f"tenant {tenant!r} has {in_queue} queued or held jobs in queue {queue!r}; its share of that queue "
                f"is {share} (MEDIC_TENANT_QUEUE_SHARE {s.tenant_queue_share:g} of its high watermark)",
                queue=queue,
                queued=in_queue,
                share=share,
                retry_after=retry_after,
            )
    _counted(tenant, None, len(news))
    for queue, n in per_queue.items():
        _counted(tenant, queue, n)
