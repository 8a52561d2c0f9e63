"""What the scale bench times at each ledger size: one run of every control loop, in process (the
body of its Celery task: `run_loop` with the lock and the run record), and four API reads over
HTTP against a real uvicorn. Each op also says what it answered, so a run that timed an op doing
nothing (a loop that found none of the planted jobs, a list that came back empty) is visible.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from bench.scale_fill import BIG_TENANT, PROBLEMS_EACH, QUEUES, Problems, between_runs, reset_problems
from worker.ledger import db

LOOP_REPS = 11
HTTP_REPS = 31
LIST_LIMIT = 50


def loop_ops() -> dict[str, Callable[[], dict[str, Any]]]:
    """Each loop's Celery task body, called in this process (the same code the control worker runs)."""
    from worker.control import tasks

    timed = (
        "recover_stuck",
        "enforce_timeouts",
        "reconcile_broker",
        "apply_backpressure",
        "autoscale",
        "health_and_alerts",
    )
    return {name: tasks.TASKS[name].run for name in timed}


def expected_loop_answer(name: str) -> dict[str, int]:
    """What each loop must report at every run: the planted jobs it acts on, the queues it walks."""
    n = PROBLEMS_EACH
    return {
        "recover_stuck": {"requeued": n, "dead": 0, "lease_late": 0},
        "enforce_timeouts": {"requeued": n, "dead": 0},
        "reconcile_broker": {"after_restart": 0, "unpublished": n, "lost": n},
        "apply_backpressure": {"queues": len(QUEUES), "shedding": 0},
        "autoscale": {"queues": len(QUEUES), "up": len(QUEUES)},
        "health_and_alerts": {},
    }[name]


def _ms(values: list[float]) -> dict[str, Any]:
    return {"p50_ms": round(statistics.median(values), 2), "runs_ms": [round(v, 2) for v in values]}


def time_loops(problems: Problems, broker_prefix: str) -> dict[str, Any]:
    """Every loop: one warm-up run, then LOOP_REPS timed runs, each after the planted jobs were put
    back and the broker's queues emptied; the counts of every run are checked against the expected."""
    out: dict[str, Any] = {}
    for name, run in loop_ops().items():
        expected = expected_loop_answer(name)
        times: list[float] = []
        answers: list[dict[str, Any]] = []
        for rep in range(LOOP_REPS + 1):
            reset_problems(problems)
            between_runs(broker_prefix)
            started = time.perf_counter()
            record = run()
            elapsed = (time.perf_counter() - started) * 1000
            if rep:
                times.append(elapsed)
                answers.append({k: v for k, v in record.items() if k not in ("at", "seconds")})
        right = all(a.get(k) == v for a in answers for k, v in expected.items()) and "skipped" not in answers[-1]
        out[name] = {**_ms(times), "answer": answers[-1], "expected": expected, "answered_right": right}
    reset_problems(problems)
    between_runs(broker_prefix)
    return out


@dataclass(frozen=True)
class ApiTarget:
    url: str
    key: str  # tenant-0, scopes read + admin


def _db_facts() -> dict[str, Any]:
    """What the API must answer, read from the ledger directly."""
    with db.connect() as conn:
        job_id = conn.scalar(
            sa.text("SELECT id FROM jobs WHERE tenant = :t AND state = 'succeeded' ORDER BY created_at DESC LIMIT 1"),
            {"t": BIG_TENANT},
        )
        queued = int(
            conn.scalar(sa.text("SELECT count(*) FROM jobs WHERE tenant = :t AND state = 'queued'"), {"t": BIG_TENANT})
            or 0
        )
    return {"job_id": str(job_id), "tenant_queued": queued}


def _check(name: str, resp: httpx.Response, facts: dict[str, Any]) -> dict[str, Any]:
    """The answer of one response, and whether it is the right one."""
    body = resp.json()
    if name == "get_job":
        ok = resp.status_code == 200 and body["id"] == facts["job_id"] and body["state"] == "succeeded"
        return {"status": resp.status_code, "answered_right": ok}
    if name == "list_queued":
        states = {j["state"] for j in body["jobs"]}
        want = min(LIST_LIMIT, facts["tenant_queued"])
        ok = resp.status_code == 200 and len(body["jobs"]) == want and states <= {"queued"}
        return {"status": resp.status_code, "rows": len(body["jobs"]), "states": sorted(states), "answered_right": ok}
    if name == "queues":
        names = sorted(q["queue"] for q in body["queues"])
        return {"status": resp.status_code, "queues": names, "answered_right": names == sorted(QUEUES)}
    ok = resp.status_code == 200 and body["status"] == "ok"
    return {"status": resp.status_code, "ready": body["status"], "answered_right": ok}


def time_api(target: ApiTarget, problems: Problems) -> dict[str, Any]:
    """Each read HTTP_REPS times after 3 warm-ups on one keep-alive connection; client-side wall time."""
    reset_problems(problems)
    facts = _db_facts()
    paths = {
        "get_job": f"/jobs/{facts['job_id']}",
        "list_queued": f"/jobs?state=queued&limit={LIST_LIMIT}",
        "queues": "/queues",
        "health_ready": "/health/ready",
    }
    out: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {target.key}"}
    assert target.url.startswith("http://127.0.0.1:"), target.url
    with httpx.Client(base_url=target.url, headers=headers, timeout=10.0) as client:
        for name, path in paths.items():
            times: list[float] = []
            resp = None
            for rep in range(HTTP_REPS + 3):
                started = time.perf_counter()
                resp = client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                if rep >= 3:
                    times.append(elapsed)
            assert resp is not None
            out[name] = {**_ms(times), "path": path, "answer": _check(name, resp, facts)}
    return out
