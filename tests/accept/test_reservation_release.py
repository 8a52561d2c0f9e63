"""An accepted job's admission reservation is removed in its publish pipeline, after the
message, not in a round trip of its own; when the publish fails it is released all the same."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from worker import JobRequest, enqueue, enqueue_many
from worker.accept import admission, commit
from worker.broker.redis_client import get_redis


@pytest.fixture
def zrems(medic_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """ZREMs sent on their own (the client's own command; a pipeline's are not seen here)."""
    calls: list[tuple[Any, ...]] = []
    client = get_redis()
    real = client.zrem

    def recording(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(client, "zrem", recording)
    return calls


def test_the_reservation_goes_with_the_publish_pipeline(zrems: list[tuple[Any, ...]]) -> None:
    # Bug caught: a release in a round trip of its own after the publish (one more per accept),
    # or none at all (the queue's room shrinks until the reservation expires).
    queue = f"gate-rel-{uuid.uuid4().hex[:8]}"
    enqueue("examples.echo", {"message": "one"}, queue=queue)
    enqueue_many([JobRequest("examples.echo", {"message": str(i)}, queue=queue) for i in range(3)])
    assert admission.reserved(queue) == 0
    assert zrems == []


def test_a_refused_publish_still_releases_the_reservation(
    zrems: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bug caught: a reservation marked removed though the pipeline that would remove it failed:
    # it would hold the queue's room until it expires.
    queue = f"gate-rel-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(commit, "publish", lambda rows, **_: [r.id for r in rows])
    done = enqueue("examples.echo", {"message": "broker down"}, queue=queue)
    assert done.created and not done.published
    assert admission.reserved(queue) == 0
    assert len(zrems) == 1
