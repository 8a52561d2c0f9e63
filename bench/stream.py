"""WS /jobs/stream under many clients: latency from COMMIT to client, and the API's memory.

`python -m bench.stream --clients 200` starts a private medic API (bench/common.py: its own
database and key prefixes), parks `--jobs` jobs of one tenant, connects `--clients` stream
clients on 127.0.0.1 (client i follows job i % jobs), then for `--seconds` commits one transition
per job per round (`--rate` rounds a second, one transaction a round, straight into job_events:
the stream's path only, no worker) and times each delivery from the moment the COMMIT returned
to the moment the client has the message. First it measures GET /jobs/{id} polling against the
cost of its ledger read and of a Redis GET: what a job-status cache could save at most.
Writes docs/bench/stream.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import ROOT, MedicRun, header, percentile, vm_rss_mb
from worker.testing.processes import Processes

MAX_CLIENTS = 2000  # loopback only, and a shared machine: keep it bounded


def park_jobs(tenant: str, n: int) -> list[str]:
    from worker.ledger import db

    with db.begin() as conn:
        rows = conn.execute(
            sa.text(
                "INSERT INTO jobs (id, type, queue, tenant, args, state, max_attempts, timeout_s, backoff_s,"
                " delivery_id, created_at, updated_at) SELECT gen_random_uuid(), 'examples.echo', 'bench-stream',"
                " :t, '{}'::jsonb, 'queued', 1, 60, 1, gen_random_uuid(), now(), now() FROM generate_series(1, :n)"
                " RETURNING id"
            ),
            {"t": tenant, "n": n},
        )
        return [str(r[0]) for r in rows]


def commit_round(job_ids: list[str], round_no: int) -> float:
    """One transition for every job in one transaction; the wall time right after COMMIT."""
    from worker.ledger import db

    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt)"
                " SELECT CAST(j AS uuid), now(), 'queued', 'queued', 'bench', :r, 0 FROM unnest(CAST(:ids AS text[])) j"
            ),
            {"ids": job_ids, "r": f"bench-{round_no}"},
        )
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
            at = time.time()
            msg = json.loads(frame)
            if msg["type"] == "transition":
                received.append((int(msg["reason"].split("-")[1]), at))


async def run(
    api: str, key: str, api_pid: int, job_ids: list[str], n_clients: int, seconds: float, rate: float
) -> dict[str, Any]:
    base = api.replace("http://", "ws://") + "/jobs/stream"
    received: list[list[tuple[int, float]]] = [[] for _ in range(n_clients)]
    stop = asyncio.Event()
    readies = [asyncio.Event() for _ in range(n_clients)]
    rss_idle = vm_rss_mb(api_pid)
    tasks = []
    for i in range(n_clients):
        url = f"{base}?job_id={job_ids[i % len(job_ids)]}"
        tasks.append(asyncio.create_task(client(url, key, received[i], readies[i], stop)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # connect in waves, not a SYN flood
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    rss_connected = vm_rss_mb(api_pid)
    commits: dict[int, float] = {}
    rss_peak = rss_connected
    rounds = int(seconds * rate)
    started = time.monotonic()
    for r in range(rounds):
        commits[r] = await asyncio.to_thread(commit_round, job_ids, r)
        rss_peak = max(rss_peak, vm_rss_mb(api_pid))
        await asyncio.sleep(max(0.0, started + (r + 1) / rate - time.monotonic()))
    expected = rounds * n_clients
    deadline = time.monotonic() + 10
    while sum(map(len, received)) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = sorted(at - commits[r] for per in received for r, at in per)
    ms = lambda q: round((percentile(latencies, q) or 0) * 1000, 1)  # noqa: E731
    return {
        "clients": n_clients,
        "jobs_followed": len(job_ids),
        "rounds": rounds,
        "transitions_committed": rounds * len(job_ids),
        "deliveries_expected": expected,
        "deliveries_received": len(latencies),
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": ms(1.0)},
        "api_rss_mb": {"idle": rss_idle, "clients_connected": rss_connected, "peak_during_load": rss_peak},
    }


def polling_figures(api: str, key: str, job_id: str, seconds: float = 5.0, threads: int = 8) -> dict[str, Any]:
    """What a job-status cache could save: GET /jobs/{id} as clients poll it today, against the
    cost of its ledger read and of a Redis GET (the cache's read) measured from this process."""
    from worker.broker.redis_client import get_redis
    from worker.ledger import db, queries

    def load(duration: float) -> float:
        done = [0]
        end = time.monotonic() + duration

        def worker() -> None:
            with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}) as c:
                while time.monotonic() < end:
                    assert c.get(f"/jobs/{job_id}").status_code == 200
                    done[0] += 1

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: worker(), range(threads)))
        return done[0] / duration

    load(1.0)  # warm-up
    rps = load(seconds)
    n = 2000
    started = time.perf_counter()
    for _ in range(n):
        with db.connect() as conn:
            queries.get_job(conn, uuid.UUID(job_id), "bench")
    ledger_us = (time.perf_counter() - started) / n * 1e6
    r = get_redis()
    probe = f"bench-stream-probe:{uuid.uuid4().hex}"
    r.set(probe, json.dumps({"state": "queued"}))
    started = time.perf_counter()
    for _ in range(n):
        r.get(probe)
    redis_us = (time.perf_counter() - started) / n * 1e6
    r.delete(probe)
    return {
        "get_job_rps": round(rps),
        "get_job_threads": threads,
        "get_job_ms_per_request": round(threads / rps * 1000, 2),
        "ledger_read_ms": round(ledger_us / 1000, 3),
        "redis_get_ms": round(redis_us / 1000, 3),
        "cache_could_save_share": round(max(0.0, ledger_us - redis_us) / 1000 / (threads / rps * 1000), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=5.0, help="rounds per second")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "stream.json"))
    a = parser.parse_args()
    n_clients = min(a.clients, MAX_CLIENTS)
    medic = MedicRun("production", {"MEDIC_WS_MAX_CONNECTIONS_PER_KEY": str(MAX_CLIENTS)})
    medic.create()
    log_dir = Path(tempfile.mkdtemp(prefix=f"medic-bench-stream-{medic.run}-"))
    procs = Processes(medic.env, log_dir)
    try:
        from worker.ledger import db
        from worker.ledger.apikeys import Scope, create_key

        with db.begin() as conn:
            key = create_key(conn, "bench", frozenset({Scope.READ}), name="bench-stream")
        api_proc, api = procs.api("stream-api")
        assert httpx.get(api + "/health/live").status_code == 200
        job_ids = park_jobs("bench", a.jobs)
        polling = polling_figures(api, key, job_ids[0])
        result = asyncio.run(run(api, key, api_proc.pid, job_ids, n_clients, a.seconds, a.rate))
        result["polling_get_job"] = polling
    finally:
        procs.stop_all()
        medic.drop()
    from worker.settings import get_settings

    result = {
        **header("stream"),
        "what": "COMMIT of a job_events row -> the message in a stream client's hands, loopback, one API process",
        "poll_seconds": get_settings().ws_poll_seconds,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        **result,
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
