"""One nemesis run, start to end: the cluster up, steady load, the seeded schedule of faults, a
tail of load after the last fault, the client stopped, a bounded drain, then the checker over the
histories and the ledger. Shared by the test (tests/nemesis/test_nemesis.py, a short schedule)
and the bench (bench/nemesis.py, `make nemesis`, ten minutes).

The seed is NEMESIS_SEED if set (to replay a run), else a fresh random one; it is printed at the
start and written into the result."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.nemesis.checker import answers, check, read_jsonl
from tests.nemesis.cluster import Cluster
from tests.nemesis.nemesis import Nemesis
from tests.nemesis.schedule import KINDS, WORKERS, plan

BUCKET_S = 5.0


def seed_from_env() -> int:
    text = os.environ.get("NEMESIS_SEED", "").strip()
    return int(text) if text else secrets.randbelow(2**31)


@dataclass
class Options:
    seed: int
    length_s: float  # the schedule's length (faults are placed inside it)
    rate: float = 3.0  # submits per second (180 a minute)
    fill: bool = False  # more faults than one of each kind (the bench)
    start_after_s: float = 5.0  # steady load before the first fault
    tail_s: float = 10.0  # load after the last fault ended
    drain_s: float = 60.0  # longest wait for every accepted job to succeed
    min_job_s: float = 0.3
    max_job_s: float = 2.0


def histories(run_dir: Path) -> list[dict[str, Any]]:
    return [line for path in sorted((run_dir / "hosts").glob("*/history.jsonl")) for line in read_jsonl(path)]


def _log(msg: str) -> None:
    print(f"[nemesis {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(opts: Options, run_dir: Path) -> dict[str, Any]:
    """Run the whole thing in `run_dir` (kept: its logs and histories are the evidence)."""
    _log(f"seed {opts.seed} (replay with NEMESIS_SEED={opts.seed}); run dir {run_dir}")
    began = time.time()
    with Cluster(run_dir) as c:
        setup_s = time.time() - began
        lease = float(c.settings["lease_seconds"])
        schedule = plan(opts.seed, opts.length_s, lease, KINDS, fill=opts.fill)
        for p in schedule:
            p.at += opts.start_after_s
        _log(f"cluster up in {setup_s:.1f}s, settings {c.settings}; {len(schedule)} faults planned")
        client_out = run_dir / "client.jsonl"
        argv = [
            sys.executable,
            "-m",
            "tests.nemesis.client",
            c.api_url,
            c.api_key,
            str(run_dir),
            str(client_out),
            "--rate",
            str(opts.rate),
            "--seed",
            str(opts.seed),
            "--min-seconds",
            str(opts.min_job_s),
            "--max-seconds",
            str(opts.max_job_s),
        ]
        client = c.start_proc("client", "client", argv)
        t0 = time.time()
        nemesis = Nemesis(c, opts.seed)
        nemesis.run(schedule, t0)
        planned_end = max(p.end() for p in schedule)
        finished = nemesis.join(timeout=planned_end + 240)
        faults = nemesis.faults()
        last_fault_end = max(f["end"] for f in faults) if faults else t0
        _log(f"faults done ({len(faults)}, all ended: {finished}); tail of load {opts.tail_s}s")
        time.sleep(opts.tail_s)
        client.popen.send_signal(signal.SIGTERM)
        try:
            client.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            client.kill_group()
        load_end = time.time()
        accepted = list(answers(read_jsonl(client_out)).accepted)
        _log(f"load stopped; {len(accepted)} accepted; draining (at most {opts.drain_s}s)")
        deadline = time.monotonic() + opts.drain_s
        while (left := c.unfinished(accepted)) and time.monotonic() < deadline:
            time.sleep(1.0)
        drain_s = time.time() - load_end
        states, events = c.ledger(accepted)
        history = histories(run_dir)
        verdict = check(history, read_jsonl(client_out), faults, states, events)
        ended = time.time()
        consuming = _consuming_after(history, last_fault_end)
        worker_alive = {h: c.procs[h].alive() for h in WORKERS}
        exits = nemesis.found_dead + _unexpected_exits(c)
    _log(
        f"done: lost {verdict['jobs']['lost']}, duplicates {verdict['duplicate_finishes']}, "
        f"overlaps {verdict['overlaps']}, recovery {verdict['recovery_s']['overall']}"
    )
    return {
        "seed": opts.seed,
        "replay": f"NEMESIS_SEED={opts.seed}",
        "options": vars(opts),
        "settings": c.settings,
        "run_dir": str(run_dir),
        "times": {
            "began": began,
            "setup_s": round(setup_s, 1),
            "load_start": t0,
            "last_fault_end": last_fault_end,
            "load_end": load_end,
            "drain_s": round(drain_s, 1),
            "unfinished_after_drain": left,
            "ended": ended,
            "total_s": round(ended - began, 1),
        },
        "schedule": [p.as_dict() for p in schedule],
        "faults": faults,
        "fault_kinds_run": sorted({f["kind"] for f in faults if "error" not in f}),
        "fault_errors": [{"kind": f["kind"], "host": f["host"], "error": f["error"]} for f in faults if "error" in f],
        "consuming_after_last_fault": consuming,
        "workers_alive_at_end": worker_alive,
        "unexpected_exits": exits,
        "throughput": _throughput(events, t0, ended),
        **verdict,
    }


def _unexpected_exits(c: Cluster) -> list[dict[str, Any]]:
    """Processes of the deployment that are gone though the nemesis did not end them (the current
    process of each role, at the end, before teardown), with their last error line."""
    out = []
    for role, proc in c.procs.items():
        if role == "client" or proc.alive():
            continue
        errors = [line for line in proc.log().splitlines() if "CRITICAL" in line or "Error" in line]
        out.append(
            {"role": role, "pid": proc.pid, "exit": proc.popen.returncode, "last_error": (errors or [""])[-1][:300]}
        )
    return out


def _consuming_after(history: list[dict[str, Any]], since: float) -> dict[str, int]:
    """Executions each worker host started after `since`: a worker that consumes nothing shows 0."""
    out = dict.fromkeys(WORKERS, 0)
    for line in history:
        if line["event"] == "start" and float(line["t"]) > since and line["host"] in out:
            out[line["host"]] += 1
    return out


def _throughput(events: list[Any], t0: float, t1: float) -> dict[str, Any]:
    """Jobs succeeded per BUCKET_S seconds, from the ledger's succeeded events, since load start."""
    counts: dict[int, int] = defaultdict(int)
    for e in events:
        if e.to_state == "succeeded":
            counts[int((e.at - t0) // BUCKET_S)] += 1
    n = int((t1 - t0) // BUCKET_S) + 1
    return {"bucket_s": BUCKET_S, "succeeded": [counts.get(i, 0) for i in range(n)]}
