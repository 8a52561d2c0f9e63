"""What a bulk button counts is what its action changes (queries.count_matching and
queries.matching_ids share one rule)."""

from __future__ import annotations

import uuid

import pytest

from worker.clock import utcnow
from worker.ledger import db, queries
from worker.ledger.models import jobs
from worker.ledger.queries import JobFilter


def _row(tenant: str, state: str, *, asked: bool = False) -> dict[str, object]:
    now = utcnow()
    return {
        "id": uuid.uuid4(), "type": "examples.echo", "queue": "default", "tenant": tenant, "args": {"n": 1},
        "state": state, "max_attempts": 1, "timeout_s": 10.0, "backoff_s": 0.0, "delivery_id": uuid.uuid4(),
        "created_at": now, "updated_at": now, "cancel_requested_at": now if asked else None,
    }  # fmt: skip


@pytest.mark.usefixtures("medic_env")
def test_a_count_and_its_bulk_action_agree() -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    rows = [_row(tenant, "running", asked=True), _row(tenant, "running"), _row(tenant, "queued"),
            _row(tenant, "held"), _row(tenant, "dead"), _row(tenant, "succeeded")]  # fmt: skip
    with db.begin() as conn:
        conn.execute(jobs.insert(), rows)
    match = JobFilter(tenant)
    with db.connect() as conn:
        cancel_count = queries.count_matching(conn, match, up_to=100, states=queries.CANCELLABLE)
        cancel_ids = set(queries.matching_ids(conn, match, states=queries.CANCELLABLE, limit=100))
        retry_count = queries.count_matching(conn, match, up_to=100, states=queries.RETRYABLE)
        capped = queries.count_matching(conn, match, up_to=2)
    # Bugs caught: the running job already asked to stop counted (the page says 4, the action
    # changes 3), finished jobs counted as cancellable, the cap not applied.
    assert cancel_ids == {r["id"] for r in rows[1:4]}
    assert cancel_count == len(cancel_ids) == 3
    assert retry_count == 1
    assert capped == 2
