"""New jobs for tests that write the ledger directly: a `NewJob` with the settings' defaults,
made without the accept path (its validation is not what these tests are about)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from worker.clock import utcnow
from worker.ledger.records import NewJob
from worker.settings import get_settings


def a_new_job(tenant: str = "ledger-tests", type_: str = "examples.echo", **fields: Any) -> NewJob:
    """A job ready to insert; keyword arguments set any other field of `NewJob`."""
    s, now = get_settings(), utcnow()
    new = NewJob(
        id=uuid.uuid4(),
        type=type_,
        queue=s.default_queue,
        priority=0,
        tenant=tenant,
        args={"message": "x"},
        max_attempts=s.default_max_attempts,
        timeout_s=s.default_timeout_seconds,
        backoff_s=s.default_backoff_seconds,
        delivery_id=uuid.uuid4(),
        created_at=now,
    )
    return dataclasses.replace(new, **fields)
