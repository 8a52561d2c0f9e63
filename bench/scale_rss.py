"""The scale bench's memory check: real no-op jobs submitted through the real API
(`POST /jobs/batch`, which calls enqueue_many) and run by a real `celery worker` (prefork -c 2);
the resident set (VmRSS) of the API process and of each worker child after a tenth of the jobs
and after all of them. Growth between the two is a leak, or a cache without a bound.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import load_check, vm_rss_mb
from worker.ledger import db
from worker.testing.processes import Proc, Processes

RSS_QUEUE = "bench-scale-rss"
BATCH = 100
BACKLOG = 2000  # at most this many submitted and not yet finished: no shedding, bounded queue
ECHO = {"type": "examples.echo", "args": {"message": "x"}, "queue": RSS_QUEUE}


def _finished() -> int:
    with db.connect() as conn:
        return int(
            conn.scalar(
                sa.text("SELECT count(*) FROM jobs WHERE queue = :q AND state IN ('succeeded', 'dead')"),
                {"q": RSS_QUEUE},
            )
            or 0
        )


def _run_until(client: httpx.Client, submitted: int, target: int, cap_s: float) -> tuple[int, int]:
    """Submit in batches, keeping the backlog bounded, until `target` jobs are finished; returns
    (submitted, finished)."""
    deadline = time.monotonic() + cap_s
    finished = _finished()
    while finished < target and time.monotonic() < deadline:
        if submitted < target and submitted - finished < BACKLOG:
            n = min(BATCH, target - submitted)
            resp = client.post("/jobs/batch", json={"jobs": [ECHO] * n})
            if resp.status_code == 202:
                submitted += n
                client.get(f"/jobs/{resp.json()['jobs'][0]['id']}")  # the read path too
            else:
                time.sleep(0.2)
        else:
            time.sleep(0.1)
        finished = _finished()
    return submitted, finished


def rss_check(procs: Processes, api: tuple[Proc, str], key: str, jobs: int, cap_s: float) -> dict[str, Any]:
    """Run `jobs` no-op jobs through the API and one worker; RSS after jobs/10 and after jobs."""
    api_proc, url = api
    worker = procs.worker("scale-rss", RSS_QUEUE, 2)
    children = worker.children()
    api_pid = (api_proc.children() or [api_proc.pid])[0]  # uvicorn --workers 1 serves in-process
    points: dict[str, Any] = {}
    submitted = 0
    started = time.monotonic()
    assert url.startswith("http://127.0.0.1:"), url
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30.0) as client:
        for label, target in (("first", max(1, jobs // 10)), ("last", jobs)):
            submitted, finished = _run_until(client, submitted, target, cap_s - (time.monotonic() - started))
            points[label] = {
                "jobs_finished": finished,
                "elapsed_s": round(time.monotonic() - started, 1),
                "api_rss_mb": vm_rss_mb(api_pid),
                "worker_children_rss_mb": {str(pid): vm_rss_mb(pid) for pid in worker.children()},
                "worker_main_rss_mb": vm_rss_mb(worker.pid),
                "load": load_check(),
            }
    same_children = sorted(worker.children()) == sorted(children)
    first, last = points["first"], points["last"]
    api_growth = round(last["api_rss_mb"] / first["api_rss_mb"] - 1, 3)
    child_growth = {
        pid: round(last["worker_children_rss_mb"][pid] / mb - 1, 3)
        for pid, mb in first["worker_children_rss_mb"].items()
        if pid in last["worker_children_rss_mb"]
    }
    worst_child = max(child_growth.values()) if child_growth else None
    return {
        "jobs": jobs,
        "how": f"POST /jobs/batch of {BATCH} examples.echo on {RSS_QUEUE} through the API, at most {BACKLOG} "
        "unfinished; one `medic worker -c 2` (prefork); RSS = VmRSS from /proc/<pid>/status",
        "after_first_tenth": first,
        "after_all": last,
        "all_finished": last["jobs_finished"] >= jobs,
        "same_worker_children_throughout": same_children,
        "api_growth": api_growth,
        "worker_child_growth": child_growth,
        "target_growth": 0.2,
        "meets_target": last["jobs_finished"] >= jobs
        and same_children
        and abs(api_growth) <= 0.2
        and worst_child is not None
        and worst_child <= 0.2,
    }
