"""Overload: a flood far above what the workers drain, against medic's admission control.

One worker slot drains `examples.sleep(0.2)`; bounded clients on 127.0.0.1 submit as fast as the
API answers for `--seconds`, on the `fast` profile. After the flood it waits (bounded) until every
accepted job is terminal, then counts: the database is dropped at the end. Prints one JSON object
and writes a PNG of depth, watermarks and admission state over time (needs matplotlib).

    .venv/bin/python -m bench.overload --seconds 30 --plot docs/overload.png
"""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import ROOT, MedicRun, header, options, percentile_ms, poll_until
from worker.accept.admission import Watermarks

JOB_S = 0.2
PROFILE = "fast"
QUEUE = "flood"
TERMINAL = ("succeeded", "dead", "cancelled")

Answer = tuple[float, int, float]  # seconds since the start, HTTP status, latency in seconds
Sample = tuple[float, int, str]  # seconds since the start, queue depth, admission state


def flood(url: str, key: str, answers: list[Answer], t0: float, seconds: float) -> None:
    body = {"type": "examples.sleep", "args": {"seconds": JOB_S}, "queue": QUEUE}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        for _ in range(100_000):  # bounded in count, and in time below
            if time.monotonic() - t0 > seconds:
                return
            started = time.monotonic()
            status = client.post("/jobs", json=body).status_code
            answers.append((started - t0, status, time.monotonic() - started))  # list.append is atomic


def sample(samples: list[Sample], t0: float, stop: threading.Event) -> None:
    from worker.accept import admission
    from worker.broker import inspect

    while not stop.is_set():
        state = admission.published_state(QUEUE).get("state", "unknown")
        samples.append((time.monotonic() - t0, inspect.depth(QUEUE), state))
        time.sleep(0.1)


def plot(answers: list[Answer], samples: list[Sample], wm: Watermarks, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in samples]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[3, 1])
    ax.plot(t, [s[1] for s in samples], label="queue depth (LLEN, all priorities)", color="tab:blue")
    ax.axhline(wm.hard, color="tab:red", linestyle=":", label=f"hard limit (critical) {wm.hard}")
    ax.axhline(wm.high, color="tab:red", linestyle="--", label=f"high watermark {wm.high}")
    ax.axhline(wm.low, color="tab:green", linestyle="-.", label=f"low watermark {wm.low}")
    shedding = [s[2] == "shedding" for s in samples]
    ax.fill_between(t, 0, wm.hard * 1.05, where=shedding, color="tab:red", alpha=0.08, label="shedding")
    ax.set_ylabel("jobs waiting")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("medic under a flood: depth, watermarks and admission state")
    seconds = range(int(max(a[0] for a in answers)) + 1)
    ok = [sum(1 for a in answers if int(a[0]) == i and a[1] == 202) for i in seconds]
    no = [sum(1 for a in answers if int(a[0]) == i and a[1] == 429) for i in seconds]
    ax2.bar(seconds, ok, color="tab:green", label="202 accepted / s", align="edge")
    ax2.bar(seconds, no, bottom=ok, color="tab:orange", label="429 rejected / s", align="edge")
    ax2.set_xlabel("seconds")
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def summarize(answers: list[Answer], samples: list[Sample], wm: Watermarks, seconds: float) -> dict[str, Any]:
    ok = [a[2] for a in answers if a[1] == 202]
    no = [a[2] for a in answers if a[1] == 429]
    states = [s[2] for s in samples]
    depths = [s[1] for s in samples]
    return {
        "requests": len(answers),
        "other_statuses": sorted({a[1] for a in answers} - {202, 429}),
        "accepted_per_s": round(len(ok) / seconds, 1),
        "rejected_per_s": round(len(no) / seconds, 1),
        "latency_ms": {
            "202": {"p50": percentile_ms(ok, 0.5), "p99": percentile_ms(ok, 0.99)},
            "429": {"p50": percentile_ms(no, 0.5), "p99": percentile_ms(no, 0.99)},
        },
        "depth": {"peak": max(depths), "median": statistics.median(depths)},
        "watermarks": {"high": wm.high, "low": wm.low, "hard_limit": wm.hard},
        "peak_over_high": max(depths) - wm.high,
        "admission_transitions": sum(1 for a, b in itertools.pairwise(states) if a != b and "unknown" not in (a, b)),
    }


def count_by(column: sa.ColumnElement[Any]) -> dict[Any, int]:
    from worker.ledger import db

    with db.connect() as conn:
        return dict(conn.execute(sa.select(column, sa.func.count()).group_by(column)).all())


def drain(accepted: int, t0: float) -> dict[str, Any]:
    """Wait until every accepted job is terminal, at most twice the time one slot needs for all
    of them plus 60 s; the final states and how long after the flood's start it took."""
    from worker.ledger.models import jobs

    def all_terminal() -> bool:
        states = count_by(jobs.c.state)
        return sum(states.get(s, 0) for s in TERMINAL) == sum(states.values())

    bound = accepted * JOB_S * 2 + 60
    done = poll_until(all_terminal, bound, 0.5)
    return {
        "states": count_by(jobs.c.state),
        "all_terminal": done,
        "terminal_after_s": round(time.monotonic() - t0, 1),
        "wait_bound_s": round(bound, 1),
    }


def main() -> None:
    args = options(__doc__, seconds=30.0, clients=8, high=100, low=50, plot=ROOT / "docs" / "overload.png")
    extra = {
        "MEDIC_QUEUE_WATERMARKS": json.dumps({QUEUE: [args.high, args.low]}),
        "MEDIC_API_MAX_INFLIGHT": "256",
        "MEDIC_TENANT_QUEUE_SHARE": "1",  # one tenant floods: the queue's watermark is what is measured
    }
    answers: list[Answer] = []
    samples: list[Sample] = []
    stop = threading.Event()
    with MedicRun(PROFILE, extra) as medic:
        from worker.accept import admission
        from worker.ledger.models import job_events

        wm = admission.watermarks(QUEUE)
        key = medic.api_key("bench", "submit,read")
        _, url = medic.procs.api("api")
        medic.procs.worker("w", queues=QUEUE, concurrency=1)
        medic.procs.control_plane()
        t0 = time.monotonic()
        threads = [threading.Thread(target=sample, args=(samples, t0, stop))]
        threads += [
            threading.Thread(target=flood, args=(url, key, answers, t0, args.seconds)) for _ in range(args.clients)
        ]
        for t in threads:
            t.start()
        time.sleep(args.seconds + 10)  # the flood, then 10 s of draining on the plot
        accepted = sum(1 for a in list(answers) if a[1] == 202)
        jobs_end = drain(accepted, t0)  # still sampling: the plot shows the whole drain
        stop.set()
        for t in threads:
            t.join()
        reasons = count_by(job_events.c.reason)
    plot(answers, samples, wm, args.plot)
    report: dict[str, Any] = {**header("overload"), "profile": PROFILE, "seconds": args.seconds}
    report |= {"clients": args.clients, "job_seconds": JOB_S}
    report["accepted_jobs"] = {"accepted_202": accepted, **jobs_end}
    report["events_by_reason"] = reasons
    report |= {"worker_slots": 1, **summarize(answers, samples, wm, args.seconds), "plot": str(args.plot)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
