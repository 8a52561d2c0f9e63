"""Overload: a flood far above what the workers drain, against medic's admission control.

One worker slot drains `examples.sleep(0.2)` (about 5 jobs/s); bounded clients on 127.0.0.1 submit
as fast as the API answers for `--seconds`. Prints one JSON object (accepted and rejected per
second, p50/p99 latency of 202 and 429 answers, peak depth vs the high watermark, admission
transitions, and what became of every accepted job) and writes a PNG of depth, watermarks and
admission state over time. It runs with the `fast` profile (short leases and loop periods).

After the flood it waits (bounded) until every accepted job is terminal before counting: the
database is dropped at the end, so anything counted earlier would be a job still in flight.

    .venv/bin/python -m bench.overload --seconds 30 --plot docs/overload.png
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import ROOT, MedicRun, header, percentile
from worker.testing.processes import Processes

JOB_S = 0.2
PROFILE = "fast"
TERMINAL = ("succeeded", "dead", "cancelled")


def ms(values: list[float], q: float) -> float | None:
    """The `q` quantile of latencies in seconds, in ms."""
    value = percentile(sorted(values), q)
    return None if value is None else round(value * 1000, 1)


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: list[tuple[float, int, float]] = []  # (t, status, latency)
        self.samples: list[tuple[float, int, str]] = []  # (t, depth, admission)

    def answer(self, t: float, status: int, latency: float) -> None:
        with self.lock:
            self.answers.append((t, status, latency))


def flood(url: str, key: str, queue: str, rec: Recorder, t0: float, seconds: float, stop: threading.Event) -> None:
    body = {"type": "examples.sleep", "args": {"seconds": JOB_S}, "queue": queue}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for _ in range(100_000):  # bounded in count, and in time below
            if stop.is_set() or time.monotonic() - t0 > seconds:
                return
            started = time.monotonic()
            status = client.post("/jobs", json=body).status_code
            rec.answer(started - t0, status, time.monotonic() - started)


def sample(queue: str, rec: Recorder, t0: float, stop: threading.Event) -> None:
    from worker.accept import admission
    from worker.broker import inspect

    while not stop.is_set():
        state = admission.published_state(queue).get("state", "unknown")
        rec.samples.append((time.monotonic() - t0, inspect.depth(queue), state))
        time.sleep(0.1)


def plot(rec: Recorder, high: int, low: int, hard: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in rec.samples]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[3, 1])
    ax.plot(t, [s[1] for s in rec.samples], label="queue depth (LLEN, all priorities)", color="tab:blue")
    for y, name, style in (
        (hard, "hard limit (critical)", ":"),
        (high, "high watermark", "--"),
        (low, "low watermark", "-."),
    ):
        ax.axhline(y, color="tab:red" if y != low else "tab:green", linestyle=style, label=f"{name} {y}")
    shedding = [s[2] == "shedding" for s in rec.samples]
    ax.fill_between(t, 0, hard * 1.05, where=shedding, color="tab:red", alpha=0.08, label="shedding")
    ax.set_ylabel("jobs waiting")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("medic under a flood: depth, watermarks and admission state")
    seconds = int(max(a[0] for a in rec.answers)) + 1
    ok = [sum(1 for a in rec.answers if int(a[0]) == i and a[1] == 202) for i in range(seconds)]
    no = [sum(1 for a in rec.answers if int(a[0]) == i and a[1] == 429) for i in range(seconds)]
    ax2.bar(range(seconds), ok, color="tab:green", label="202 accepted / s", align="edge")
    ax2.bar(range(seconds), no, bottom=ok, color="tab:orange", label="429 rejected / s", align="edge")
    ax2.set_xlabel("seconds")
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def summarize(rec: Recorder, high: int, low: int, hard: int, seconds: float) -> dict[str, Any]:
    ok = [a for a in rec.answers if a[1] == 202]
    no = [a for a in rec.answers if a[1] == 429]
    states = [s[2] for s in rec.samples]
    transitions = sum(1 for a, b in itertools.pairwise(states) if a != b and "unknown" not in (a, b))
    return {
        "requests": len(rec.answers),
        "other_statuses": sorted({a[1] for a in rec.answers} - {202, 429}),
        "accepted_per_s": round(len(ok) / seconds, 1),
        "rejected_per_s": round(len(no) / seconds, 1),
        "latency_ms": {
            "202": {"p50": ms([a[2] for a in ok], 0.5), "p99": ms([a[2] for a in ok], 0.99)},
            "429": {"p50": ms([a[2] for a in no], 0.5), "p99": ms([a[2] for a in no], 0.99)},
        },
        "depth": {"peak": max(s[1] for s in rec.samples), "median": statistics.median(s[1] for s in rec.samples)},
        "watermarks": {"high": high, "low": low, "hard_limit": hard},
        "peak_over_high": max(s[1] for s in rec.samples) - high,
        "admission_transitions": transitions,
    }


def job_states() -> dict[str, int]:
    from worker.ledger import db
    from worker.ledger.models import jobs

    with db.connect() as conn:
        rows = conn.execute(sa.select(jobs.c.state, sa.func.count()).group_by(jobs.c.state)).all()
    return {state: count for state, count in rows}


def drain(accepted: int, t0: float) -> dict[str, Any]:
    """Wait until every accepted job is terminal, at most twice the time one slot needs for all
    of them plus 60 s; returns the final states and how long after the flood's start it took."""
    bound = accepted * JOB_S * 2 + 60
    deadline = time.monotonic() + bound
    states = job_states()
    while sum(states.get(s, 0) for s in TERMINAL) < sum(states.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        states = job_states()
    terminal = sum(states.get(s, 0) for s in TERMINAL)
    return {
        "states": states,
        "all_terminal": terminal == sum(states.values()),
        "terminal_after_s": round(time.monotonic() - t0, 1),
        "wait_bound_s": round(bound, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--high", type=int, default=100)
    parser.add_argument("--low", type=int, default=50)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "overload.png")
    args = parser.parse_args()

    queue = "flood"
    extra = {"MEDIC_QUEUE_WATERMARKS": json.dumps({queue: [args.high, args.low]}), "MEDIC_API_MAX_INFLIGHT": "256"}
    medic = MedicRun(PROFILE, extra)
    from worker.accept import admission
    from worker.ledger import apikeys, db

    medic.create()
    with db.begin() as conn:
        key = apikeys.create_key(conn, "bench", apikeys.parse_scopes("submit,read"))
    wm = admission.watermarks(queue)
    procs = Processes(medic.env, Path(tempfile.mkdtemp(prefix="medic-overload-")))
    rec, stop = Recorder(), threading.Event()
    try:
        _, url = procs.api("api")
        procs.worker("w", queues=queue, concurrency=1)
        procs.control_plane()
        t0 = time.monotonic()
        threads = [threading.Thread(target=sample, args=(queue, rec, t0, stop))]
        threads += [threading.Thread(target=flood, args=(url, key, queue, rec, t0, args.seconds, stop))
                    for _ in range(args.clients)]  # fmt: skip
        for t in threads:
            t.start()
        time.sleep(args.seconds + 10)  # the flood, then 10 s of draining on the plot
        accepted = sum(1 for a in list(rec.answers) if a[1] == 202)
        jobs_end = drain(accepted, t0)  # still sampling: the plot shows the whole drain
        stop.set()
        for t in threads:
            t.join()
        from worker.ledger.models import job_events

        with db.connect() as conn:
            reasons: dict[str | None, int] = dict(
                conn.execute(sa.select(job_events.c.reason, sa.func.count()).group_by(job_events.c.reason)).all()
            )
    finally:
        procs.stop_all()
        medic.drop()
    plot(rec, wm.high, wm.low, wm.hard, args.plot)
    report: dict[str, Any] = {**header("overload"), "profile": PROFILE, "seconds": args.seconds}
    report |= {"clients": args.clients, "job_seconds": JOB_S}
    report["accepted_jobs"] = {"accepted_202": accepted, **jobs_end}
    report["events_by_reason"] = reasons
    report |= {"worker_slots": 1, **summarize(rec, wm.high, wm.low, wm.hard, args.seconds), "plot": str(args.plot)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
