"""The library's `enqueue` is held to the same policy as `POST /jobs`: the tenant quota and the
queues' watermarks apply unless the caller opts out by name (`admission=False`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from api.errors import status_for
from tests.conftest import switched_env
from worker import enqueue, enqueue_many
from worker.accept import JobRequest
from worker.errors import QueueFullError, TenantQuotaError, UnknownJobTypeError
from worker.ledger import db
from worker.ledger.models import jobs

HIGH = 3


def _rows(queue: str) -> int:
    with db.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.queue == queue)) or 0)


@pytest.fixture
def gated_queue(medic_env: dict[str, str]) -> Iterator[str]:
    """A queue nobody consumes, with a high watermark of 3."""
    name = f"gate-lib-{uuid.uuid4().hex[:8]}"
    with switched_env({"MEDIC_QUEUE_WATERMARKS": json.dumps({name: [HIGH, 1]})}):
        yield name


@pytest.fixture
def full_queue(gated_queue: str) -> str:
    """The gated queue, filled to its watermark by the library."""
    for i in range(HIGH):
        enqueue("examples.echo", {"message": str(i)}, queue=gated_queue, tenant="lib-gate")
    return gated_queue


def test_library_enqueue_over_the_watermark_is_refused_with_the_apis_429_error(full_queue: str) -> None:
    # Bug caught: the library path skipping admission control (it accepted the 4th job).
    with pytest.raises(QueueFullError) as refused:
        enqueue("examples.echo", {"message": "one too many"}, queue=full_queue, tenant="lib-gate")
    assert status_for(refused.value) == 429
    assert refused.value.details["retry_after"] >= 1
    assert _rows(full_queue) == HIGH, "nothing is written for a refused job"


def test_a_batch_over_the_watermark_is_refused_whole(gated_queue: str) -> None:
    # Bug caught: a batch admitted and written job by job: the one that fits is kept, then the
    # next is refused.
    enqueue_many([JobRequest("examples.echo", {"message": str(i)}, queue=gated_queue) for i in range(HIGH - 1)])
    with pytest.raises(QueueFullError):
        enqueue_many([JobRequest("examples.echo", {"message": str(i)}, queue=gated_queue) for i in range(2)])
    assert _rows(gated_queue) == HIGH - 1


def test_admission_false_is_the_explicit_way_past_the_watermark(full_queue: str) -> None:
    # Bug caught: the opt-out ignored (refused), or applied to validation too (see the last check).
    done = enqueue("examples.echo", {"message": "operator"}, queue=full_queue, tenant="lib-gate", admission=False)
    assert done.created and done.job.queue == full_queue
    assert _rows(full_queue) == HIGH + 1
    with pytest.raises(UnknownJobTypeError):
        enqueue("no.such.job", {}, queue=full_queue, admission=False)


def test_library_enqueue_counts_against_the_tenant_quota(medic_env: dict[str, str]) -> None:
    # Bug caught: the library path skipping the tenant quota (the 3rd job accepted).
    tenant = f"lib-quota-{uuid.uuid4().hex[:8]}"
    queue = f"quota-lib-{uuid.uuid4().hex[:8]}"
    with switched_env({"MEDIC_TENANT_QUEUED_QUOTA": "2"}):
        enqueue_many([JobRequest("examples.echo", {"message": str(i)}, queue=queue) for i in range(2)], tenant=tenant)
        with pytest.raises(TenantQuotaError) as refused:
            enqueue("examples.echo", {"message": "third"}, queue=queue, tenant=tenant)
        assert status_for(refused.value) == 429
        assert _rows(queue) == 2
        assert enqueue("examples.echo", {"message": "ops"}, queue=queue, tenant=tenant, admission=False).created
