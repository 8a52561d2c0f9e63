"""`medic submit --wait`: follow one job over `WS /jobs/stream`, polling only as a fallback.

The stream is opened with `job_id=<id>&since=0`, so the job's events already written (the job
may have run before the socket opened) are replayed from the ledger before live ones: no race
between the POST and the subscription. With a job_id the server reads only that job's events, on
its index from the job's first one (api/stream_replay.py), not the ledger from 0. A stream the
server ends on purpose (`overflow`, or `reconnect` when its lifetime is over) is resumed from the
cursor it names; a dropped one from the last cursor seen, at most RESUMES times; if the stream
cannot be had at all (an older API, a proxy without WebSockets), the job is polled.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import httpx

TERMINAL = ("succeeded", "dead", "cancelled")
RESUMES = 3  # stream drops survived before falling back to polling
RESUME_FROM = ("overflow", "reconnect")  # the server ends the stream and names the cursor: not a drop


class Progress:
    """One line that updates in place on a terminal; one line per transition otherwise (logs)."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.tty = out.isatty()

    def show(self, message: dict[str, Any]) -> None:
        text = describe(message)
        if self.tty:
            self.out.write("\r\x1b[2K" + text)  # carriage return + erase line: the same line again
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def done(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def describe(message: dict[str, Any]) -> str:
    """One line for a stream message: a transition, or a running job's progress (`40% step 2`)."""
    head = message["job_id"][:8]
    if message.get("reason") == "progress" and message.get("detail"):
        try:
            report = json.loads(message["detail"])
            text = f"{head} running {float(report['fraction']) * 100:.0f}%"
        except (ValueError, TypeError, KeyError):
            text = f"{head} running {message['detail']}"
        else:
            if report.get("message"):
                text += f" {report['message']}"
        return text
    return (
        f"{head} {message.get('from_state') or '-'} -> {message['to_state']}"
        f" (attempt {message['attempt']}, {message['reason']})"
    )


def _ws_url(api_url: str, job_id: str, since: str) -> str:
    base = api_url.rstrip("/").replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return f"{base}/jobs/stream?{httpx.QueryParams({'job_id': job_id, 'since': since})}"


def follow_stream(api_url: str, key: str, job_id: str, deadline: float, show: Callable[[dict[str, Any]], None]) -> bool:
    """True once the job reached a terminal state over the stream; False: the stream is not
    available (fall back to polling) or the deadline passed."""
    try:
        from websockets.exceptions import ConnectionClosed, InvalidHandshake
        from websockets.sync.client import connect
    except ImportError:  # websockets comes with uvicorn[standard]; without it, poll
        return False
    since, drops = "0", 0
    while drops <= RESUMES and time.monotonic() < deadline:
        resume = False
        try:
            with connect(_ws_url(api_url, job_id, since), additional_headers={"Authorization": f"Bearer {key}"}) as ws:
                while (left := deadline - time.monotonic()) > 0:
                    message = json.loads(ws.recv(timeout=left))
                    if message.get("type") == "transition":
                        since = message["cursor"]
                        show(message)
                        if message["to_state"] in TERMINAL:
                            return True
                    elif message.get("type") in RESUME_FROM:
                        since, resume = message["cursor"], True
                        break
        except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake):
            if not resume:
                drops += 1  # reconnect from the last cursor: nothing missed, nothing twice
            continue
        if not resume:
            return False  # the deadline passed
    return False


def poll(client: httpx.Client, job_id: str, deadline: float, interval: float = 0.5) -> dict[str, Any]:
    """The fallback: GET the job until it ends or the deadline passes."""
    job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
    while job["state"] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(interval)
        job = client.get(f"/jobs/{job_id}").json()
    return job
