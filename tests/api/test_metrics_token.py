"""GET /metrics behind a bearer token when MEDIC_METRICS_TOKEN is set; open when it is not."""

from __future__ import annotations

import httpx

from worker.testing.processes import Processes

TOKEN = "scrape-secret-1234"


def test_metrics_needs_the_token_when_one_is_set(procs: Processes) -> None:
    _, url = procs.api("api-metrics-token", MEDIC_METRICS_TOKEN=TOKEN)
    with httpx.Client(base_url=url, timeout=10) as http:
        missing = http.get("/metrics")
        assert missing.status_code == 401, missing.text
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        assert "medic_jobs" not in missing.text
        wrong = http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401
        basic = http.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
        ok = http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and "medic_ledger_up" in ok.text
        assert http.get("/health/live").status_code == 200, "only /metrics is behind the token"


def test_metrics_stay_open_without_a_token(procs: Processes) -> None:
    _, url = procs.api("api-metrics-open")
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200 and "medic_ledger_up" in response.text
