"""WS /jobs/stream under many clients: latency from COMMIT to client, and the API's memory.

Parks `--jobs` jobs of one tenant and connects `--clients` stream clients (client i follows job
i % jobs); then for `--seconds` commits one transition per job per round (`--rate` rounds a second,
one transaction a round, straight into job_events: the stream's path only, no worker) and times
each delivery from the moment the COMMIT returned to the moment the client has the message. First
it measures GET /jobs/{id} polling against the cost of its ledger read and of a Redis GET: what a
job-status cache could save at most. Prints one JSON object.

    .venv/bin/python -m bench.stream --clients 1000 --jobs 100 --seconds 10 --rate 5
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import MedicRun, header, options, percentile_ms, vm_rss_mb
from worker.ledger import db

MAX_CLIENTS = 2000  # loopback only, and a shared machine: keep it bounded
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
PARK = """
INSERT INTO jobs (id, type, queue, tenant, args, state, max_attempts, timeout_s, backoff_s, delivery_id, created_at,
                  updated_at)
SELECT gen_random_uuid(), 'examples.echo', 'bench-stream', 'bench', '{}'::jsonb, 'queued', 1, 60, 1,
       gen_random_uuid(), now(), now()
FROM generate_series(1, :n)
RETURNING id
"""
TRANSITION = """
INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt)
SELECT CAST(j AS uuid), now(), 'queued', 'queued', 'bench', :r, 0 FROM unnest(CAST(:ids AS text[])) j
"""


def commit_round(job_ids: list[str], round_no: int) -> float:
    """One transition for every job in one transaction; the wall time right after COMMIT."""
    with db.begin() as conn:
        conn.execute(sa.text(TRANSITION), {"ids": job_ids, "r": f"bench-{round_no}"})
    return time.time()


async def client(
    url: str, key: str, received: list[tuple[int, float]], ready: asyncio.Event, stop: asyncio.Event
) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, open_timeout=60) as ws:
        json.loads(await ws.recv())  # subscribed
        ready.set()
        while not stop.is_set():
            try:
                frame = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            at, msg = time.time(), json.loads(frame)
            if msg["type"] == "transition":
                received.append((int(msg["reason"].split("-")[1]), at))


async def stream(
    api: str, key: str, api_pid: int, job_ids: list[str], n_clients: int, seconds: float, rate: float
) -> dict[str, Any]:
    """Connect the clients in waves, commit the rounds at `rate`, wait (bounded) for every delivery."""
    received: list[list[tuple[int, float]]] = [[] for _ in range(n_clients)]
    readies = [asyncio.Event() for _ in range(n_clients)]
    stop = asyncio.Event()
    rss_idle = vm_rss_mb(api_pid)
    tasks = []
    for i in range(n_clients):
        url = f"{api.replace('http://', 'ws://')}/jobs/stream?job_id={job_ids[i % len(job_ids)]}"
        tasks.append(asyncio.create_task(client(url, key, received[i], readies[i], stop)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # connect in waves, not a SYN flood
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    rss_connected = rss_peak = vm_rss_mb(api_pid)
    commits: dict[int, float] = {}
    rounds, started = int(seconds * rate), time.monotonic()
    for r in range(rounds):
        commits[r] = await asyncio.to_thread(commit_round, job_ids, r)
        rss_peak = max(rss_peak, vm_rss_mb(api_pid))
        await asyncio.sleep(max(0.0, started + (r + 1) / rate - time.monotonic()))
    deadline = time.monotonic() + 10
    while sum(map(len, received)) < rounds * n_clients and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = [at - commits[r] for per in received for r, at in per]
    return {
        "clients": n_clients,
        "jobs_followed": len(job_ids),
        "rounds": rounds,
        "transitions_committed": rounds * len(job_ids),
        "deliveries_expected": rounds * n_clients,
        "deliveries_received": len(latencies),
        "latency_ms": {name: percentile_ms(latencies, q) for name, q in QUANTILES.items()},
        "api_rss_mb": {"idle": rss_idle, "clients_connected": rss_connected, "peak_during_load": rss_peak},
    }


def per_call_ms(call: Callable[[], Any], n: int = 2000) -> float:
    started = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - started) / n * 1000


def polling(api: str, key: str, job_id: str, seconds: float = 5.0, threads: int = 8) -> dict[str, Any]:
    """What a job-status cache could save: GET /jobs/{id} as clients poll it today, against the
    cost of its ledger read and of a Redis GET (the cache's read) measured from this process."""
    from worker.broker.redis_client import get_redis
    from worker.ledger import queries

    def poll(duration: float) -> int:
        done, end = 0, time.monotonic() + duration
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}) as c:
            while time.monotonic() < end:
                assert c.get(f"/jobs/{job_id}").status_code == 200
                done += 1
        return done

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(poll, [1.0] * threads))  # warm-up
        rps = sum(pool.map(poll, [seconds] * threads)) / seconds

    def ledger_read() -> None:
        with db.connect() as conn:
            queries.get_job(conn, uuid.UUID(job_id), "bench")

    r, probe = get_redis(), f"bench-stream-probe:{uuid.uuid4().hex}"
    r.set(probe, json.dumps({"state": "queued"}))
    ledger_ms, redis_ms = per_call_ms(ledger_read), per_call_ms(lambda: r.get(probe))
    r.delete(probe)
    request_ms = threads / rps * 1000
    return {
        "get_job_rps": round(rps),
        "get_job_threads": threads,
        "get_job_ms_per_request": round(request_ms, 2),
        "ledger_read_ms": round(ledger_ms, 3),
        "redis_get_ms": round(redis_ms, 3),
        "cache_could_save_share": round(max(0.0, ledger_ms - redis_ms) / request_ms, 3),
    }


def main() -> None:
    a = options(__doc__, clients=200, jobs=50, seconds=10.0, rate=5.0)
    n_clients = min(a.clients, MAX_CLIENTS)
    with MedicRun("production", {"MEDIC_WS_MAX_CONNECTIONS_PER_KEY": str(MAX_CLIENTS)}) as medic:
        from worker.settings import get_settings

        key = medic.api_key("bench", "read")
        api_proc, api = medic.procs.api("stream-api")
        with db.begin() as conn:
            job_ids = [str(row[0]) for row in conn.execute(sa.text(PARK), {"n": a.jobs})]
        poll_figures = polling(api, key, job_ids[0])
        result = asyncio.run(stream(api, key, api_proc.pid, job_ids, n_clients, a.seconds, a.rate))
        poll_seconds = get_settings().ws_poll_seconds
    report = {
        **header("stream"),
        "what": "COMMIT of a job_events row -> the message in a stream client's hands, loopback, one API process",
        "poll_seconds": poll_seconds,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        **result,
        "polling_get_job": poll_figures,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
