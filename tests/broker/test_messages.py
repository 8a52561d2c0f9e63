"""medic builds its task messages itself (worker/broker/messages.py); they must be what Celery's
own `send_task` puts on the broker, in the same Redis list, or workers would read them differently.

The reference is captured from kombu's Redis channel (`Channel._put`) while `app.send_task` sends
the same delivery with the options medic used to pass it."""

from __future__ import annotations

import base64
import datetime as dt
import json
import types
import uuid
from typing import Any

import pytest
from kombu.transport import redis as kombu_redis

from worker.broker import messages, redis_keys
from worker.broker.celery_app import app
from worker.broker.messages import delivery_message, kombu_priority
from worker.settings import get_settings


def _row(priority: int, not_before: dt.datetime | None) -> Any:
    return types.SimpleNamespace(
        id=uuid.uuid4(), delivery_id=uuid.uuid4(), type="examples.echo", queue="q-messages",
        priority=priority, timeout_s=60, tenant="acme", not_before=not_before,
    )  # fmt: skip


def _celery_sends(row: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, Any]]:
    """(list key, message) of `row` as `app.send_task` sends it."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def capture(channel: Any, queue: str, message: dict[str, Any], **_: Any) -> None:
        pri = channel._get_message_priority(message, reverse=False)
        seen.append((channel.global_keyprefix + channel._q_for_pri(queue, pri), json.loads(json.dumps(message))))

    monkeypatch.setattr(kombu_redis.Channel, "_put", capture)
    s = get_settings()
    options: dict[str, Any] = {
        "args": [str(row.id), str(row.delivery_id)],
        "task_id": str(row.delivery_id),
        "queue": row.queue,
        "priority": kombu_priority(row.priority),
        "soft_time_limit": row.timeout_s,
        "time_limit": row.timeout_s + s.timeout_grace_seconds,
        "headers": {messages.TENANT_HEADER: row.tenant},
    }
    if row.not_before is not None:
        options["eta"] = row.not_before
    app.send_task(row.type, **options)
    monkeypatch.undo()
    [sent] = seen
    return sent


@pytest.mark.parametrize(
    ("priority", "eta_s"), [(0, None), (2, None), (5, None), (9, None), (3, 30.0)], ids=["p0", "p2", "p5", "p9", "eta"]
)
def test_a_built_message_is_what_send_task_sends(
    medic_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, priority: int, eta_s: float | None
) -> None:
    # Bugs caught: a header, property or body field missing or different (a worker would see other
    # time limits, no tenant, a lost eta, another task id); a message pushed onto the wrong
    # priority list, or without the broker's key prefix (no worker would ever pop it).
    not_before = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=eta_s) if eta_s else None
    row = _row(priority, not_before)
    want_key, want = _celery_sends(row, monkeypatch)
    got_key, got_json = delivery_message(row)
    got = json.loads(got_json)
    assert got_key == want_key and got_key.startswith(medic_env["MEDIC_BROKER_KEY_PREFIX"])
    for tag in (want, got):  # unique per message: compare their shape, then drop them
        uuid.UUID(tag["properties"].pop("delivery_tag"))
    assert base64.b64decode(got["body"]) == base64.b64decode(want["body"])
    assert got == want


def test_priorities_land_on_kombus_lists(medic_env: dict[str, str]) -> None:
    # Bug caught: a step boundary off by one (priority 3 vs 2 of kombu's [0, 3, 6, 9] steps).
    prefix = medic_env["MEDIC_BROKER_KEY_PREFIX"]
    assert [redis_keys.queue_list_for("q", p).removeprefix(prefix) for p in (0, 2, 3, 5, 6, 8, 9)] == [
        "q", "q", "q\x06\x163", "q\x06\x163", "q\x06\x166", "q\x06\x166", "q\x06\x169",
    ]  # fmt: skip
    assert set(redis_keys.queue_lists("q")) == {redis_keys.queue_list_for("q", p) for p in range(10)}


def test_queue_of_strips_the_delay_levels_bits() -> None:
    """A message delayed in RabbitMQ's levels arrives routed by its countdown's bits then its
    queue: the worker's log lines and lost-child lines must name the queue, not that key."""
    from kombu.transport.native_delayed_delivery import calculate_routing_key

    from worker.broker.messages import queue_of

    assert queue_of({"routing_key": calculate_routing_key(5, "q.with.dots")}) == "q.with.dots"
    assert queue_of({"routing_key": "default"}) == "default"
    assert queue_of({"routing_key": "0.1.default"}) == "0.1.default", "only a whole 28-bit prefix is a delay"
    assert queue_of({}) is None
    assert queue_of(None) is None
