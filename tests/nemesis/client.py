"""The load: steady submits of `nemesis.tick` over HTTP to the API host, every answer recorded.

    python -m tests.nemesis.client URL KEY LOG_DIR OUT_JSONL --rate 4 --seed 1

Runs in the `client` host until SIGTERM, then stops submitting new jobs, lets the submits in
flight end (each gives up within its own bound) and exits. Each submit carries its own
Idempotency-Key and is retried with the SAME key after a timeout, a connection error, a 429 or a
503, so a retry can never make a second job: the answer to the retry names the same job (200,
Idempotent-Replayed) if the first attempt was in fact accepted. Every attempt's answer is one JSON
line: key, try, status (or the error), job id, wall time sent and answered."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

GIVE_UP_S = 60.0  # one submit retries this long at most (past every fault of the schedule)
TIMEOUT_S = 5.0
RETRYABLE = {429, 503}
STOP_GRACE_S = 10.0  # after SIGTERM, submits still being retried get this long, then give up
stop_at = [0.0]


class Recorder:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, entry: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())


def submit_one(http: httpx.Client, rec: Recorder, args: dict[str, Any], stop: threading.Event) -> None:
    """One job: tried until an answer that is final (202/200, or any other code but 429/503), or
    GIVE_UP_S, with the same idempotency key throughout."""
    key = uuid.uuid4().hex
    first = time.time()
    attempt = 0
    while True:
        attempt += 1
        sent = time.time()
        entry: dict[str, Any] = {"key": key, "try": attempt, "sent": sent}
        retry_after = 0.5
        try:
            r = http.post("/jobs", json={"type": "nemesis.tick", "args": args}, headers={"Idempotency-Key": key})
            entry["status"] = r.status_code
            if r.status_code in (200, 202):
                entry["job"] = r.json()["id"]
            else:
                entry["error"] = r.text[:200]
                retry_after = min(float(r.headers.get("Retry-After", "1") or 1), 5.0)
        except httpx.HTTPError as exc:
            entry["status"] = None
            entry["error"] = f"{type(exc).__name__}: {exc}"[:200]
        entry["answered"] = time.time()
        rec.write(entry)
        status = entry["status"]
        if status is not None and status not in RETRYABLE:
            return
        if time.time() - first > GIVE_UP_S or (stop.is_set() and time.time() - stop_at[0] > STOP_GRACE_S):
            rec.write({"key": key, "gave_up": True, "at": time.time()})
            return
        time.sleep(retry_after * (0.5 + random.random()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("key")
    p.add_argument("log_dir")
    p.add_argument("out")
    p.add_argument("--rate", type=float, default=4.0, help="submits per second")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-seconds", type=float, default=0.5)
    p.add_argument("--max-seconds", type=float, default=2.5)
    a = p.parse_args()
    rng = random.Random(a.seed)
    rec = Recorder(a.out)
    stop = threading.Event()

    def on_term(*_: object) -> None:
        stop_at[0] = time.time()
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
    with (
        httpx.Client(
            base_url=a.url, headers={"Authorization": f"Bearer {a.key}"}, timeout=TIMEOUT_S, limits=limits
        ) as http,
        ThreadPoolExecutor(max_workers=48) as pool,
    ):
        print("client ready", flush=True)
        next_at = time.monotonic()
        while not stop.is_set():
            seconds = round(rng.uniform(a.min_seconds, a.max_seconds), 2)
            pool.submit(submit_one, http, rec, {"seconds": seconds, "log_dir": a.log_dir}, stop)
            next_at += 1.0 / a.rate
            stop.wait(max(0.0, next_at - time.monotonic()))
    print("client done", flush=True)


if __name__ == "__main__":
    main()
