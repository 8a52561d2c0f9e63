"""GET /alerts: admin scope; firing, pending and recently resolved alerts of the platform."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from worker.control import alerts


def _snapshot(queue: str, depth: int) -> dict[str, Any]:
    one = {"depth": depth, "queued": depth, "high_watermark": 3, "low_watermark": 1, "shedding": 0, "consumers": 1}
    return {"at": time.time(), "queues": {queue: one}}


def test_alerts_route_needs_admin_and_shows_firing_then_resolved(
    client: httpx.Client, make_key: Any, stack: str
) -> None:
    _, reader = make_key("submit,read")
    assert httpx.get(f"{stack}/alerts", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
    assert httpx.get(f"{stack}/alerts").status_code == 401

    queue = f"q-route-{uuid.uuid4().hex[:6]}"
    now = time.time()
    alerts.evaluate(_snapshot(queue, 5), now)  # MedicQueueShedding has no `for`: it fires at once
    firing = client.get("/alerts").json()["firing"]
    [mine] = [a for a in firing if a["labels"] == {"queue": queue}]
    assert mine["name"] == "MedicQueueShedding" and mine["severity"] == "warning"

    alerts.evaluate(_snapshot(queue, 0), now + 1)
    body = client.get("/alerts").json()
    assert not [a for a in body["firing"] if a["labels"] == {"queue": queue}]
    [gone] = [a for a in body["resolved"] if a["labels"] == {"queue": queue}]
    assert gone["resolved_at"] == now + 1
