"""Where alert notifications go: the log always, and a webhook in Alertmanager's shape.

The webhook is posted by a background thread with retries and back-off, so a slow or dead
receiver never holds up the health loop; past its queue's bound a notification is dropped and
the drop is logged (the log sink already has it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import queue
from typing import Any

import httpx

from worker.background import BackgroundThread
from worker.forksafe import PerProcess
from worker.settings import get_settings

log = logging.getLogger("medic.alerts")

ZERO_TIME = "0001-01-01T00:00:00Z"
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # then the notification is given up (and logged)
QUEUE_BOUND = 1000
IDLE_WAIT_S = 1.0  # how long the sender waits on an empty queue before it looks at its stop


def _iso(ts: float | None) -> str:
    if ts is None:
        return ZERO_TIME
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def alertmanager_body(alert: dict[str, Any], status: str) -> dict[str, Any]:
    """One alert as Alertmanager's webhook receiver would post it (version 4)."""
    labels = {"alertname": alert["name"], "severity": alert["severity"], **alert["labels"]}
    fingerprint = hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]
    one = {
        "status": status,
        "labels": labels,
        "annotations": {"summary": alert["summary"]},
        "startsAt": _iso(alert.get("fired_at")),
        "endsAt": _iso(alert.get("resolved_at")) if status == "resolved" else ZERO_TIME,
        "generatorURL": "",
        "fingerprint": fingerprint,
    }
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{alert["name"]}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "medic",
        "groupLabels": {"alertname": alert["name"]},
        "commonLabels": labels,
        "commonAnnotations": one["annotations"],
        "externalURL": "",
        "alerts": [one],
    }


class WebhookSender:
    """One thread per process posting queued notifications in order, each retried with back-off."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue(QUEUE_BOUND)
        # No pause between notifications: the wait is the queue's (bounded, so a stop is seen).
        self.thread = BackgroundThread("medic-alert-webhook", self.send_next, every_s=0, logger=log)
        self.thread.start()

    def submit(self, body: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(body)
        except queue.Full:
            log.error("alert webhook queue full; dropped %s %s", body["status"], body["groupLabels"])

    def send_next(self) -> None:
        """Post the next queued notification, if one comes within IDLE_WAIT_S."""
        try:
            body = self.queue.get(timeout=IDLE_WAIT_S)
        except queue.Empty:
            return
        with httpx.Client(timeout=5.0) as client:  # notifications are rare: no connection kept between them
            self._post(client, body)

    def _post(self, client: httpx.Client, body: dict[str, Any]) -> None:
        for delay in (0.0, *RETRY_DELAYS):
            if delay and self.thread.pause(delay):
                return
            try:
                response = client.post(self.url, json=body)
                if response.status_code < 400:
                    return
                why = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            log.warning("alert webhook %s failed (%s); retrying", body["status"], why)
        log.error("alert webhook gave up on %s %s", body["status"], body["groupLabels"])


_sender: PerProcess[str, WebhookSender] = PerProcess(WebhookSender, close=lambda w: w.thread.stop())


def notify(alert: dict[str, Any], status: str) -> None:
    """Send one firing or resolved notification to every sink; never blocks, never raises."""
    line = f"{alert['name']} {alert['labels'] or ''} [{alert['severity']}]: {alert['summary']}"
    if status == "firing":
        log.warning("ALERT firing %s", line)
    else:
        log.info("ALERT resolved %s", line)
    url = get_settings().alert_webhook_url
    if url:
        _sender.get(url).submit(alertmanager_body(alert, status))
