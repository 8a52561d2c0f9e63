"""GET /alerts: what the health_and_alerts loop found (admin scope)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import AdminKey
from worker.control import alerts

router = APIRouter(tags=["operations"])


@router.get("/alerts")
def list_alerts(key: AdminKey) -> dict[str, Any]:
    """Alerts firing or pending (their condition holds, not yet for their `for`), and the most
    recently resolved ones, newest first. Cluster-wide: alerts are about the platform, not a tenant."""
    current = alerts.active()
    return {
        "firing": [a for a in current if a["firing"]],
        "pending": [a for a in current if not a["firing"]],
        "resolved": alerts.recently_resolved(),
    }
