"""Throughput: medic vs plain Celery, same run, same Redis, same machine.

    (a) enqueue rate from Python: medic `enqueue()` one job per call and `enqueue_many()` in
        batches, vs plain Celery `apply_async` in a loop (`plain.noop`);
    (b) HTTP `POST /jobs` through medic's real API (uvicorn) vs a bare FastAPI endpoint that only
        calls `apply_async` (bench/plain_api.py), driven by the same bounded thread-pool client;
    (c) end to end: N no-op jobs through one worker each (prefork, same concurrency, acks_late),
        from the first publish to the last completion (medic: the ledger's finished_at; plain:
        each task records its completion time in Redis);
    then py-spy profiles of medic's single and batch enqueue and of its worker processes during
    (c) (wall clock, I/O waits included), of its API process during (b) (the GIL holder), and the
    CPU each process group spends per job in (b) and (c), summed up in "where_time_goes".

    .venv/bin/python -m bench.throughput            # full run, about 3 minutes on 2 cores
    .venv/bin/python -m bench.throughput --quick    # tiny sizes, about 25 s: a smoke test

Sides run alternately (medic, plain, medic, plain), each after a warm-up; the ledger table and
the queues are emptied before every measurement. Every load loop is bounded in count and time and
talks only to 127.0.0.1. Prints one JSON object. Needs PostgreSQL and Redis on 127.0.0.1 (like the
tests); creates and drops its own database `medic_bench_<random>` and deletes its Redis keys
(prefixes `bench<run>:`, `benchb<run>:`, `bench-plain-<run>:`) at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from worker.testing.processes import Proc, Processes, free_port, wait_for
from worker.testing.servers import pg_admin_execute

ROOT = Path(__file__).resolve().parent.parent


REDIS_URL = "redis://127.0.0.1:6379/0"
HOST = "127.0.0.1"
Q_ENQUEUE = "bench-tp-enqueue"  # (a): nobody consumes it; emptied before every measurement
Q_HTTP = "bench-tp-http"  # (b): likewise
Q_E2E = "bench-tp-e2e"  # (c): one medic worker and one plain worker consume it (each its own prefix)
PY_SPY = Path(sys.executable).parent / "py-spy"
ECHO_ARGS = {"message": "x"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sizes:
    rounds: int  # measured rounds per side, alternating
    warmup_s: float  # (a) warm-up per mode
    enqueue_s: float  # (a) duration of one measurement ...
    enqueue_cap: int  # ... and its most jobs
    batch_size: int  # (a) jobs per enqueue_many call, and (c) medic's publish batch
    http_requests: int  # (b) requests per measurement ...
    http_s: float  # ... and its longest duration
    http_threads: int
    http_warmup: int  # (b) requests per side before measuring
    e2e_jobs: int  # (c) jobs per measurement
    e2e_warmup: int
    e2e_cap_s: float  # (c) longest wait for one measurement's jobs to finish
    concurrency: int  # (c) prefork children per worker
    profile_s: float  # py-spy duration of each profile


FULL = Sizes(
    rounds=3,
    warmup_s=0.5,
    enqueue_s=3.0,
    enqueue_cap=50_000,
    batch_size=100,
    http_requests=1200,
    http_s=8.0,
    http_threads=6,
    http_warmup=150,
    e2e_jobs=2000,
    e2e_warmup=200,
    e2e_cap_s=90.0,
    concurrency=2,
    profile_s=6.0,
)
QUICK = Sizes(
    rounds=2,
    warmup_s=0.1,
    enqueue_s=0.3,
    enqueue_cap=2_000,
    batch_size=20,
    http_requests=60,
    http_s=3.0,
    http_threads=4,
    http_warmup=10,
    e2e_jobs=60,
    e2e_warmup=10,
    e2e_cap_s=30.0,
    concurrency=2,
    profile_s=1.0,
)


# ---------------------------------------------------------------------------------------- stats


def summary(values: list[float], *, higher_is_better: bool = True, digits: int = 1) -> dict[str, Any]:
    if not values:
        return {"median": None, "best": None, "runs": []}
    best = max(values) if higher_is_better else min(values)
    return {
        "median": round(statistics.median(values), digits),
        "best": round(best, digits),
        "runs": [round(v, digits) for v in values],
    }


def ratio(medic: dict[str, Any], plain: dict[str, Any], target: float) -> dict[str, Any]:
    def r(key: str) -> float | None:
        if not medic.get(key) or not plain.get(key):
            return None
        return round(medic[key] / plain[key], 3)

    out = {"median": r("median"), "best": r("best"), "target": target}
    out["meets_target_on_median"] = out["median"] is not None and out["median"] >= target
    return out


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


# ------------------------------------------------------------------------------------ resources


def _delete_prefix(r: redis.Redis, prefix: str) -> int:  # type: ignore[type-arg]
    n = 0
    for key in r.scan_iter(match=f"{prefix}*", count=1000):
        n += r.delete(key)
    return n


# ------------------------------------------------------------------------------ CPU accounting


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _pids_named(comm: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == comm:
                    pids.append(int(entry.name))
    return pids


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


class CpuMeter:
    """CPU seconds spent by groups of processes between start() and stop()."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]]) -> None:
        self.groups = groups

    def _snapshot(self) -> dict[str, dict[int, float]]:
        snap: dict[str, dict[int, float]] = {}
        for name, pids in self.groups().items():
            snap[name] = {pid: cpu for pid in pids if (cpu := _proc_cpu(pid)) is not None}
        return snap

    def start(self) -> None:
        self._before = self._snapshot()
        self._machine_before = _machine_busy()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, Any]:
        after = self._snapshot()
        busy, _ = _machine_busy()
        wall = time.monotonic() - self._t0
        used = {
            name: sum(cpu - self._before.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items())
            for name, pids in after.items()
        }
        return {
            "cpu_s": {name: round(v, 3) for name, v in used.items()},
            "wall_s": round(wall, 3),
            "machine_busy_cores": round((busy - self._machine_before[0]) / max(wall, 1e-9), 2),
        }


# ------------------------------------------------------------------------------------- py-spy


def spy(pid: int, seconds: float, out: Path, *, gil: bool = False) -> subprocess.Popen[bytes]:
    """py-spy on `pid` for `seconds`, collapsed stacks per thread. Default: wall clock (--idle: a
    thread waiting on a socket counts). gil=True: only the thread holding the GIL, i.e. where a
    GIL-bound process spends its one core."""
    argv = [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "100"]
    argv += ["--gil"] if gil else ["--idle"]
    argv += ["--threads", "--full-filenames", "--format", "raw", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


Frame = tuple[str, str]  # (function, file)


def read_stacks(path: Path, thread: str | None = "MainThread") -> list[tuple[list[Frame], int]]:
    """Collapsed py-spy stacks of one thread name: (frames root first, samples)."""
    stacks: list[tuple[list[Frame], int]] = []
    if not path.exists():
        return stacks
    for line in path.read_text(errors="replace").splitlines():
        text, _, count = line.rpartition(" ")
        if not text or not count.isdigit():
            continue
        parts = text.split(";")
        if parts and parts[0].startswith(("thread (", "process (")):
            head, parts = parts[0], parts[1:]
            if thread is not None and not head.endswith(f": {thread}"):
                continue
        frames: list[Frame] = []
        for part in parts:
            name, _, where = part.partition(" (")
            frames.append((name, where.rsplit(":", 1)[0]))
        stacks.append((frames, int(count)))
    return stacks


def _is(name: str, func: str) -> bool:
    """py-spy qualifies names (`Heartbeat.track`, `execute.<locals>.do_claim`): match the last part."""
    return name == func or name.endswith("." + func)


def has(func: str | None = None, file: str | None = None) -> Callable[[list[Frame]], bool]:
    """Some frame of the stack is `func` (in a file whose path contains `file`)."""

    def match(frames: list[Frame]) -> bool:
        return any((func is None or _is(f, func)) and (file is None or file in p) for f, p in frames)

    return match


def anyof(*preds: Callable[[list[Frame]], bool]) -> Callable[[list[Frame]], bool]:
    return lambda frames: any(p(frames) for p in preds)


def every(*preds: Callable[[list[Frame]], bool]) -> Callable[[list[Frame]], bool]:
    return lambda frames: all(p(frames) for p in preds)


def leaf_in(*files: str, funcs: Iterable[str] | None = None) -> Callable[[list[Frame]], bool]:
    wanted = set(funcs) if funcs is not None else None

    def match(frames: list[Frame]) -> bool:
        if not frames:
            return False
        func, path = frames[-1]
        return any(f in path for f in files) and (wanted is None or any(_is(func, w) for w in wanted))

    return match


Rule = tuple[str, Callable[[list[Frame]], bool]]


def categorize(
    stacks: list[tuple[list[Frame], int]], rules: list[Rule], rest: str
) -> tuple[int, dict[str, int], dict[str, Counter[str]]]:
    """Samples per category (the first rule a stack matches, else `rest`), and per category the
    samples by kind of work (where the leaf frame is)."""
    counts: Counter[str] = Counter()
    kinds: dict[str, Counter[str]] = {}
    for frames, n in stacks:
        label = next((label for label, pred in rules if pred(frames)), rest)
        counts[label] += n
        kinds.setdefault(label, Counter())[leaf_kind(frames)] += n
    return sum(counts.values()), dict(counts), kinds


def shares(
    total: int,
    counts: dict[str, int],
    top: int | None = None,
    ms_per_job: float | None = None,
    kinds: dict[str, Counter[str]] | None = None,
) -> list[dict[str, Any]]:
    rows = sorted(counts.items(), key=lambda kv: -kv[1])
    out = []
    for label, n in rows[:top]:
        row: dict[str, Any] = {"what": label, "share": round(n / total, 3) if total else 0.0}
        if ms_per_job is not None:
            row["ms_per_job"] = round(ms_per_job * n / total, 3) if total else 0.0
        if kinds and n:
            row["of_which"] = {k: round(c / n, 2) for k, c in kinds[label].most_common(3) if c / n >= 0.1}
        out.append(row)
    return out


MEDIC = str(ROOT / "worker") + "/"  # medic's own files, never celery/worker/...
PLAIN_TASKS = str(ROOT / "bench" / "plain_celery_app.py")

# Where a sample's innermost Python frame is, by kind of work (the leaf of the stack).
LEAF_RULES: list[Rule] = [
    ("postgres: statement round trip", leaf_in("sqlalchemy/engine/default.py", funcs=["do_execute", "do_executemany"])),
    ("postgres: COMMIT round trip", leaf_in("sqlalchemy/", funcs=["do_commit"])),
    ("postgres: pool_pre_ping round trip", leaf_in("sqlalchemy/", funcs=["do_ping"])),
    ("postgres: ROLLBACK round trip (reset on return)", leaf_in("sqlalchemy/", funcs=["do_rollback"])),
    ("redis: socket I/O", leaf_in("/redis/", funcs=["_read_from_socket", "send_packed_command", "sendall", "recv"])),
    ("redis-py: Python", leaf_in("/redis/")),
    ("SQLAlchemy/psycopg2: Python", leaf_in("/sqlalchemy/", "/psycopg2/")),
    ("kombu/celery: Python", leaf_in("/kombu/", "/celery/", "/amqp/", "/vine/")),
    ("billiard: pipe I/O", leaf_in("/billiard/")),
    ("pydantic", leaf_in("/pydantic/", "/pydantic_core/")),
    ("json", leaf_in("/json/")),
    ("logging", leaf_in("/logging/")),
    ("medic code", leaf_in(MEDIC, str(ROOT / "api"))),
]
LEAF_REST = "other Python / stdlib"


def leaf_kind(frames: list[Frame]) -> str:
    return next((label for label, pred in LEAF_RULES if pred(frames)), LEAF_REST)


ENQUEUE_RULES: list[Rule] = [
    (
        "ledger: connection checkout incl. pool_pre_ping SELECT 1",
        every(has(file="sqlalchemy/pool/"), has(func="begin", file=MEDIC + "db.py")),
    ),
    ("ledger: COMMIT (WAL flush, synchronous_commit=on)", has(func="do_commit")),
    (
        "ledger: INSERT jobs RETURNING + INSERT job_events (SQLAlchemy + 2 round trips)",
        has(func="create_jobs", file=MEDIC),
    ),
    ("celery: task-sent event (task_send_sent_event=True), a 2nd Redis publish per job", has(file="celery/events/")),
    ("celery/kombu: publish the task message (send_task, producer pool)", has(file=MEDIC + "publish.py")),
    ("redis: queue arrival counters (queue_stats.record_arrivals)", has(file=MEDIC + "queue_stats.py")),
    ("validation + row build (pydantic, uuid4, json size check)", has(func="build_row", file=MEDIC)),
    ("ledger: transaction begin/end, connection return (rollback-reset)", has(func="begin", file=MEDIC + "db.py")),
]

API_RULES: list[Rule] = [
    (
        "tenant quota: COUNT of the tenant's queued jobs on every request (admission.check_tenant_quota)",
        has(func="check_tenant_quota", file=MEDIC),
    ),
    (
        "admission: Redis EVAL (queue depth + pending) and DECRBY release (admission.py)",
        has(file=MEDIC + "admission.py"),
    ),
    *ENQUEUE_RULES,
    ("response: JobPublic.of (api/schemas.py)", has(file=str(ROOT / "api" / "schemas.py"))),
    (
        "other medic code in the route (api/routes/jobs.py, worker/)",
        anyof(has(file=str(ROOT / "api")), has(file=MEDIC)),
    ),
    ("API key dependency (api/deps.py, cached)", has(file=str(ROOT / "api" / "deps.py"))),
    ("metrics (prometheus_client)", has(file="prometheus_client")),
    (
        "threadpool hand-offs: the sync route and each sync dependency run in an anyio worker thread",
        anyof(has(func="run_sync_in_worker_thread"), leaf_in("/queue.py", "/threading.py")),
    ),
    ("FastAPI: request parsing/validation, dependency solving, response serialization", has(file="/fastapi/")),
    ("uvicorn / starlette: HTTP parsing, middleware", anyof(has(file="/uvicorn/"), has(file="/starlette/"))),
]

CHILD_RULES: list[Rule] = [
    ("ledger claim: UPDATE queued->running RETURNING + event row + COMMIT", has(func="do_claim", file=MEDIC)),
    ("ledger finalize: UPDATE running->succeeded RETURNING + event row + COMMIT", has(func="_finalize", file=MEDIC)),
    (
        "presence SET in Redis at every job start (Heartbeat.track -> announce)",
        has(func="track", file=MEDIC + "heartbeat.py"),
    ),
    ("redis: drain counter INCR per job (queue_stats.record_drained)", has(file=MEDIC + "queue_stats.py")),
    ("job function + loading its args (pydantic)", has(func="_run", file=MEDIC + "runtime.py")),
    ("plain task body: INCR + RPUSH completion record (1 Redis round trip)", has(file=PLAIN_TASKS)),
    ("other medic code in the task (uuid parsing, get_heartbeat, logging)", has(file=MEDIC)),
    ("celery tracer in the child (task state, signals, logging)", has(file="celery/app/trace.py")),
    ("sending the result to the main process (billiard pipe)", has(func="put", file="billiard/queues.py")),
]
CHILD_REST = "idle: waiting for the next task from the main process (billiard pipe)"

PARENT_RULES: list[Rule] = [
    ("task events (-E: task-received/started/succeeded) published to Redis", has(file="celery/events/")),
    ("ack after the task (acks_late: unacked hash/zset cleanup)", has(func="ack")),
    ("medic request hooks (worker.request)", has(file=MEDIC + "request.py")),
    ("receiving from Redis (BRPOP, unacked bookkeeping, message decode)", has(file="kombu/transport/")),
    ("handing tasks to the pool / reading results (asynpool, billiard)", has(file="celery/concurrency/")),
    ("celery consumer: strategy, Request objects, logging", has(file="celery/worker/")),
]
PARENT_REST = "other (event loop bookkeeping)"


def idle_rule(frames: list[Frame]) -> bool:
    """The worker's event loop waiting in epoll: nothing to do."""
    return bool(frames) and _is(frames[-1][0], "poll") and "eventio" in frames[-1][1]


def profile_report(
    path: Path,
    rules: list[Rule],
    rest: str,
    *,
    top: int = 6,
    ms_per_job: float | None = None,
    must: Callable[[list[Frame]], bool] | None = None,
    idle_label: str | None = None,
    thread: str | None = "MainThread",
) -> dict[str, Any]:
    stacks = read_stacks(path, thread)
    if must is not None:
        stacks = [(f, n) for f, n in stacks if must(f)]
    all_rules = ([(idle_label, idle_rule)] if idle_label else []) + rules
    total, counts, kinds = categorize(stacks, all_rules, rest)
    busy_stacks = [(f, n) for f, n in stacks if not (idle_label and idle_rule(f))]
    busy, leaf, _ = categorize(busy_stacks, LEAF_RULES, LEAF_REST)
    report: dict[str, Any] = {
        "samples": total,
        "by_step": shares(total, counts, top, ms_per_job, kinds),
        "by_kind_of_work": shares(busy, leaf, 6),
        "raw_stacks": str(path),
    }
    if idle_label:
        report["by_kind_of_work_note"] = "shares of the non-idle samples"
    return report


# ----------------------------------------------------------------------------------------- bench


class Bench:
    def __init__(self, sizes: Sizes, log_dir: Path, profile: bool = True) -> None:
        self.sizes = sizes
        self.profile = profile
        self.log_dir = log_dir
        run = uuid.uuid4().hex[:8]
        self.db_name = f"medic_bench_{run}"
        self.medic_prefix = f"bench{run}:"
        self.broker_prefix = f"benchb{run}:"
        self.plain_prefix = f"bench-plain-{run}:"
        self.db_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.db_name}"
        self.env = {
            **os.environ,
            "MEDIC_DATABASE_URL": self.db_url,
            "MEDIC_REDIS_URL": REDIS_URL,
            "MEDIC_KEY_PREFIX": self.medic_prefix,
            "MEDIC_BROKER_KEY_PREFIX": self.broker_prefix,
            "MEDIC_PROFILE": "production",
            "BENCH_REDIS_URL": REDIS_URL,
            "BENCH_PLAIN_PREFIX": self.plain_prefix,
            "PYTHONPATH": str(ROOT),
        }
        os.environ.update(self.env)
        self.r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        self.procs = Processes(self.env, log_dir)

    # -- setup / teardown

    def setup(self) -> None:
        from worker.broker.celery_app import reconfigure
        from worker.ledger.migrate import upgrade
        from worker.settings import reset_settings

        reset_settings()
        reconfigure()
        upgrade(self.db_url)
        import bench.plain_celery_app as plain

        plain.app.conf.broker_transport_options = {"global_keyprefix": self.plain_prefix}
        self.plain = plain

    def teardown(self) -> None:
        try:
            self.procs.stop_all()
        finally:
            with contextlib.suppress(Exception):
                from worker.ledger.db import dispose_engine

                dispose_engine()
            with contextlib.suppress(Exception):
                self.plain.app.pool.force_close_all()
            pg_admin_execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            for prefix in (self.medic_prefix, self.broker_prefix, self.plain_prefix):
                _delete_prefix(self.r, prefix)

    def stop(self, proc: Proc) -> None:
        proc.stop()
        self.procs.procs.remove(proc)

    def reset(self, *queues: str) -> None:
        """An empty ledger and empty queues before each measurement, so every run starts alike."""
        from worker.ledger import db

        with db.begin() as conn:
            conn.execute(sa.text("TRUNCATE jobs CASCADE"))
        for queue in queues:
            for prefix in (self.broker_prefix, self.plain_prefix):
                for key in self.r.scan_iter(match=f"{prefix}{queue}*", count=1000):
                    self.r.delete(key)
        gc.collect()

    # -- (a) enqueue from Python

    def _enqueue_steps(self) -> dict[str, Callable[[], int]]:
        from worker.submit import JobRequest, enqueue, enqueue_many

        b = self.sizes.batch_size
        noop = self.plain.plain_noop

        def medic_single() -> int:
            enqueue("examples.echo", ECHO_ARGS, queue=Q_ENQUEUE)
            return 1

        def medic_batch() -> int:
            enqueue_many([JobRequest("examples.echo", ECHO_ARGS, queue=Q_ENQUEUE) for _ in range(b)])
            return b

        def plain_apply_async() -> int:
            noop.apply_async(queue=Q_ENQUEUE)
            return 1

        return {"medic_single": medic_single, "medic_batch": medic_batch, "plain_apply_async": plain_apply_async}

    def _rate(self, step: Callable[[], int], seconds: float, cap: int) -> float:
        n = 0
        started = time.perf_counter()
        deadline = started + seconds
        while n < cap and time.perf_counter() < deadline:
            n += step()
        return n / (time.perf_counter() - started)

    def enqueue(self) -> dict[str, Any]:
        s = self.sizes
        steps = self._enqueue_steps()
        for step in steps.values():  # warm-up: imports, connection pools, statement caches
            self.reset(Q_ENQUEUE)
            self._rate(step, s.warmup_s, s.enqueue_cap)
        runs: dict[str, list[float]] = {name: [] for name in steps}
        order = ["medic_single", "plain_apply_async", "medic_batch", "plain_apply_async"]
        for _ in range(s.rounds):
            for name in order:
                self.reset(Q_ENQUEUE)
                runs[name].append(self._rate(steps[name], s.enqueue_s, s.enqueue_cap))
        self.reset(Q_ENQUEUE)
        single = summary(runs["medic_single"])
        batch = summary(runs["medic_batch"])
        plain = summary(runs["plain_apply_async"])
        return {
            "unit": "jobs/s",
            "each_run": f"{s.enqueue_s} s or {s.enqueue_cap} jobs, whichever first; empty table and queue",
            "order": f"{s.rounds} rounds of medic_single, plain, medic_batch, plain (plain measured twice per round)",
            "medic_single": {**single, "call": "worker.enqueue('examples.echo', {'message': 'x'})"},
            "medic_batch": {**batch, "call": f"worker.enqueue_many([...{s.batch_size} JobRequests...])"},
            "plain_apply_async": {**plain, "call": "plain.noop.apply_async()"},
            "ratio_single_vs_plain": ratio(single, plain, 0.5),
            "ratio_batch_vs_plain": ratio(batch, plain, 2.0),
        }

    def profile_enqueue(self, mode: str, rate: float | None) -> dict[str, Any]:
        """py-spy on this very process while it runs the `mode` enqueue loop."""
        s = self.sizes
        step = self._enqueue_steps()[mode]
        out = self.log_dir / f"profile-enqueue-{mode}.txt"
        self.reset(Q_ENQUEUE)
        proc = spy(os.getpid(), s.profile_s, out)
        n = 0
        started = time.perf_counter()
        deadline = started + s.profile_s + 15  # py-spy's own start-up, bounded
        while proc.poll() is None and time.perf_counter() < deadline and n < 200_000:
            n += step()
        elapsed = time.perf_counter() - started
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self.reset(Q_ENQUEUE)
        report = profile_report(
            out,
            ENQUEUE_RULES,
            "other: Python glue (JobRequest, Enqueued, Row objects), GC",
            ms_per_job=1000 / rate if rate else None,
            must=has(func="profile_enqueue"),
            top=9,
        )
        report["jobs_during_profile"] = n
        report["rate_under_profiler_jobs_per_s"] = round(n / elapsed, 1)
        report["ms_per_job_basis"] = f"median unprofiled {mode} rate"
        return report

    # -- (b) HTTP

    def _http_load(
        self, url: str, body: dict[str, Any], headers: dict[str, str], n: int, seconds: float
    ) -> dict[str, Any]:
        assert url.startswith(f"http://{HOST}:"), url
        counter = itertools.count()
        deadline = time.monotonic() + seconds

        def client() -> tuple[list[float], Counter[str]]:
            latencies: list[float] = []
            errors: Counter[str] = Counter()
            with httpx.Client(base_url=url, headers=headers, timeout=10.0) as c:
                while time.monotonic() < deadline and next(counter) < n:
                    t = time.perf_counter()
                    try:
                        resp = c.post("/jobs", json=body)
                    except httpx.HTTPError as exc:
                        errors[type(exc).__name__] += 1
                        continue
                    if resp.status_code in (200, 202):
                        latencies.append(time.perf_counter() - t)
                    else:
                        errors[str(resp.status_code)] += 1
            return latencies, errors

        started = time.perf_counter()
        with ThreadPoolExecutor(self.sizes.http_threads) as pool:
            results = list(pool.map(lambda _: client(), range(self.sizes.http_threads)))
        elapsed = time.perf_counter() - started
        latencies = sorted(x for lat, _ in results for x in lat)
        errors = sum((e for _, e in results), Counter())
        return {
            "ok": len(latencies),
            "rps": len(latencies) / elapsed,
            "p50_ms": (percentile(latencies, 0.5) or 0) * 1000,
            "p99_ms": (percentile(latencies, 0.99) or 0) * 1000,
            "errors": dict(errors),
        }

    def http(self) -> dict[str, Any]:
        from worker.ledger import db
        from worker.ledger.apikeys import Scope, create_key

        s = self.sizes
        with db.begin() as conn:
            key = create_key(conn, "bench", frozenset({Scope.SUBMIT}), name="bench-throughput")
        medic_proc, medic_url = self.procs.api("medic-api")
        port = free_port()
        plain_url = f"http://{HOST}:{port}"
        plain_argv = [sys.executable, "-m", "uvicorn", "bench.plain_api:app", "--host", HOST, "--port", str(port),
                      "--no-access-log"]  # fmt: skip
        plain_proc = self.procs.http_server("plain-api", plain_argv, plain_url)
        sides = {
            "medic": (
                medic_url,
                {"type": "examples.echo", "args": ECHO_ARGS, "queue": Q_HTTP},
                {"Authorization": f"Bearer {key}"},
            ),
            "plain": (plain_url, {"type": "plain.noop", "args": {}, "queue": Q_HTTP}, {}),
        }
        bench_pid = os.getpid()
        meter = CpuMeter(
            lambda: {
                "medic_api": [medic_proc.pid],
                "plain_api": [plain_proc.pid],
                "postgres_all": _pids_named("postgres"),
                "redis_server": _pids_named("redis-server"),
                "bench_client": [bench_pid],
            }
        )
        profile: dict[str, Any] | None = None
        try:
            for url, body, headers in sides.values():
                self.reset(Q_HTTP)
                self._http_load(url, body, headers, s.http_warmup, s.http_s)
            runs: dict[str, list[dict[str, Any]]] = {"medic": [], "plain": []}
            for _ in range(s.rounds):
                for name, (url, body, headers) in sides.items():
                    self.reset(Q_HTTP)
                    meter.start()
                    result = self._http_load(url, body, headers, s.http_requests, s.http_s)
                    result["cpu"] = meter.stop()
                    runs[name].append(result)
            if self.profile:
                profile = self._profile_api(medic_proc, *sides["medic"])
            self.reset(Q_HTTP)
        finally:
            self.stop(plain_proc)
            self.stop(medic_proc)
        out: dict[str, Any] = {
            "unit": "requests/s (2xx only), latency ms",
            "client": f"httpx, {s.http_threads} threads with keep-alive, {s.http_requests} requests "
            f"or {s.http_s} s per run, to {HOST} only",
            "order": f"{s.rounds} rounds of medic, plain; empty table and queue before each run",
            "medic_body": sides["medic"][1],
            "plain_endpoint": "bench/plain_api.py: sync FastAPI route, pydantic body, apply_async, no auth",
        }
        for name, rs in runs.items():
            out[name] = {
                "rps": summary([x["rps"] for x in rs]),
                "p50_ms": summary([x["p50_ms"] for x in rs], higher_is_better=False, digits=2),
                "p99_ms": summary([x["p99_ms"] for x in rs], higher_is_better=False, digits=2),
                "errors": dict(sum((Counter(x["errors"]) for x in rs), Counter())),
                "cpu_ms_per_request_median": {
                    group: round(statistics.median(x["cpu"]["cpu_s"][group] * 1000 / max(1, x["ok"]) for x in rs), 3)
                    for group in rs[0]["cpu"]["cpu_s"]
                    if not group.startswith("plain" if name == "medic" else "medic")
                },
                "api_process_cores_median": statistics.median(
                    x["cpu"]["cpu_s"][f"{name}_api"] / x["cpu"]["wall_s"] for x in rs
                ),
                "machine_busy_cores_median": statistics.median(x["cpu"]["machine_busy_cores"] for x in rs),
            }
        out["ratio_rps_medic_vs_plain"] = ratio(out["medic"]["rps"], out["plain"]["rps"], 0.6)
        if profile is not None:
            out["profile_medic_api"] = profile
        return out

    def _profile_api(self, proc: Proc, url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        """py-spy (GIL holder) on medic's API process under the same load: where its CPU goes."""
        s = self.sizes
        out = self.log_dir / "profile-medic-api.txt"
        self.reset(Q_HTTP)
        with _background(lambda: self._http_load(url, body, headers, 100_000, s.profile_s + 2)):
            time.sleep(0.5)
            sp = spy(proc.pid, s.profile_s, out, gil=True)
            try:
                sp.wait(timeout=s.profile_s + 20)
            except subprocess.TimeoutExpired:
                sp.kill()
                sp.wait()
        report = profile_report(out, API_RULES, "other (event loop, GC)", top=10, thread=None)
        report["note"] = (
            "samples of whichever thread holds the GIL (py-spy --gil): the API process is one Python process, "
            "so this is where its one core goes; compare cpu_ms_per_request_median"
        )
        return report

    # -- (c) end to end

    def _start_workers(self) -> tuple[Proc, Proc]:
        c = self.sizes.concurrency
        medic = self.procs.worker("medic-e2e", queues=Q_E2E, concurrency=c)
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.plain_celery_app:app",
            "worker",
            "-Q",
            Q_E2E,
            "-c",
            str(c),
            "-n",
            "plain-e2e@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ]
        plain = self.procs.start("plain-e2e", cmd)
        wait_for(lambda: "ready." in plain.log() or not plain.alive(), 30, 0.1, "plain worker ready")
        assert plain.alive(), plain.log()
        return medic, plain

    def _medic_e2e(self, n: int, cap_s: float) -> dict[str, Any]:
        from worker.ledger import db
        from worker.submit import JobRequest, enqueue_many

        b = self.sizes.batch_size
        started = time.time()
        for i in range(0, n, b):
            enqueue_many([JobRequest("examples.echo", ECHO_ARGS, queue=Q_E2E) for _ in range(min(b, n - i))])
        published = time.time()
        query = sa.text(
            "SELECT count(*) FILTER (WHERE state = 'succeeded'),"
            " count(*) FILTER (WHERE state NOT IN ('queued', 'running', 'succeeded')),"
            " max(finished_at) FROM jobs WHERE queue = :q"
        )
        deadline = time.monotonic() + cap_s
        while True:
            with db.connect() as conn:
                ok, bad, last = conn.execute(query, {"q": Q_E2E}).one()
            if ok + bad >= n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return self._e2e_result(n, ok, started, published, last.timestamp() if last else None, bad)

    def _plain_e2e(self, n: int, cap_s: float) -> dict[str, Any]:
        task = self.plain.plain_noop_done
        tag = uuid.uuid4().hex[:12]
        done_key, at_key = f"{self.plain_prefix}done:{tag}", f"{self.plain_prefix}done_at:{tag}"
        started = time.time()
        for _ in range(n):
            task.apply_async((tag,), queue=Q_E2E)
        published = time.time()
        deadline = time.monotonic() + cap_s
        while int(self.r.get(done_key) or 0) < n and time.monotonic() <= deadline:
            time.sleep(0.1)
        times = [float(t) for t in self.r.lrange(at_key, 0, -1)]
        self.r.delete(done_key, at_key)
        return self._e2e_result(n, len(times), started, published, max(times) if times else None, 0)

    @staticmethod
    def _e2e_result(n: int, ok: int, started: float, published: float, last: float | None, bad: int) -> dict[str, Any]:
        span = (last - started) if last else None
        return {
            "completed": ok,
            "of": n,
            "failed": bad,
            "jobs_per_s": round(ok / span, 1) if span and ok == n else None,
            "first_publish_to_last_completion_s": round(span, 3) if span else None,
            "publishing_took_s": round(published - started, 3),
        }

    def e2e(self) -> dict[str, Any]:
        s = self.sizes
        medic_w, plain_w = self._start_workers()
        bench_pid = os.getpid()

        def groups() -> dict[str, list[int]]:
            return {
                "medic_worker_main": [medic_w.pid],
                "medic_worker_children": medic_w.children(),
                "plain_worker_main": [plain_w.pid],
                "plain_worker_children": plain_w.children(),
                "postgres_all": _pids_named("postgres"),
                "redis_server": _pids_named("redis-server"),
                "bench_process": [bench_pid],
            }

        sides = {"medic": self._medic_e2e, "plain": self._plain_e2e}
        for run in sides.values():  # warm-up: children import, connect, fill statement caches
            self.reset(Q_E2E)
            run(s.e2e_warmup, s.e2e_cap_s)
        runs: dict[str, list[dict[str, Any]]] = {"medic": [], "plain": []}
        meter = CpuMeter(groups)
        for _ in range(s.rounds):
            for name, run in sides.items():
                self.reset(Q_E2E)
                meter.start()
                result = run(s.e2e_jobs, s.e2e_cap_s)
                result["cpu"] = meter.stop()
                runs[name].append(result)
        out: dict[str, Any] = {
            "unit": "jobs/s from the first publish to the last completion",
            "jobs_per_run": s.e2e_jobs,
            "workers": f"one worker per side, prefork -c {s.concurrency}, prefetch 1, acks_late, INFO logging; "
            "medic also -E (task events) as medic's worker_cmd does",
            "medic_job": "examples.echo {'message': 'x'}, published with enqueue_many in batches of "
            f"{s.batch_size}; completion = every row succeeded (ledger finished_at)",
            "plain_task": "plain.noop_done(tag), published with apply_async in a loop; completion = "
            "its INCR + RPUSH(time) in Redis",
            "order": f"{s.rounds} rounds of medic, plain after a warm-up of {s.e2e_warmup} jobs each",
        }
        for name, rs in runs.items():
            rates = [r["jobs_per_s"] for r in rs if r["jobs_per_s"]]
            cpu_ms = {
                group: round(statistics.median(r["cpu"]["cpu_s"][group] for r in rs) * 1000 / s.e2e_jobs, 3)
                for group in rs[0]["cpu"]["cpu_s"]
                if not group.startswith("plain" if name == "medic" else "medic")
            }
            out[name] = {
                "jobs_per_s": summary(rates),
                "all_completed": all(r["completed"] == r["of"] for r in rs),
                "runs": [{k: v for k, v in r.items() if k != "cpu"} for r in rs],
                "cpu_ms_per_job_median": cpu_ms,
                "machine_busy_cores_median": statistics.median(r["cpu"]["machine_busy_cores"] for r in rs),
            }
        out["ratio_medic_vs_plain"] = ratio(out["medic"]["jobs_per_s"], out["plain"]["jobs_per_s"], 0.7)
        if self.profile:
            rates = {name: out[name]["jobs_per_s"]["median"] or 100.0 for name in sides}
            out["profiles"] = self.profile_workers(medic_w, plain_w, rates)
        return out

    def profile_workers(self, medic_w: Proc, plain_w: Proc, rates: dict[str, float]) -> dict[str, Any]:
        """py-spy on each worker's main process and children while a backlog drains."""
        s = self.sizes
        out: dict[str, Any] = {}
        for name, proc, run in (("medic", medic_w, self._medic_e2e), ("plain", plain_w, self._plain_e2e)):
            # a backlog that keeps the worker busy through the whole profile, and not much longer
            n = max(50, min(20_000, int(rates[name] * (s.profile_s + 2))))
            self.reset(Q_E2E)
            pids = {"main": proc.pid, **{f"child{i}": pid for i, pid in enumerate(proc.children())}}
            files = {k: self.log_dir / f"profile-{name}-worker-{k}.txt" for k in pids}
            with _background(lambda run=run, n=n: run(n, s.e2e_cap_s)) as result:
                time.sleep(0.5)  # the backlog is building: the worker is busy
                spies = [spy(pids[k], s.profile_s, files[k]) for k in files]
                for sp in spies:
                    try:
                        sp.wait(timeout=s.profile_s + 20)
                    except subprocess.TimeoutExpired:
                        sp.kill()
                        sp.wait()
            drained = result.get("value", {})
            child_stacks = [f for k, f in files.items() if k.startswith("child")]
            merged = self.log_dir / f"profile-{name}-worker-children.txt"
            merged.write_text("".join(p.read_text(errors="replace") for p in child_stacks if p.exists()))
            out[name] = {
                "children_main_thread": profile_report(merged, CHILD_RULES, CHILD_REST, top=8),
                "main_process": profile_report(
                    files["main"], PARENT_RULES, PARENT_REST, top=6, idle_label="idle: event loop waiting in epoll"
                ),
                "drain_during_profile": {k: drained.get(k) for k in ("completed", "of", "jobs_per_s")},
            }
        self.reset(Q_E2E)
        return out


@contextlib.contextmanager
def _background(fn: Callable[[], Any]) -> Iterator[dict[str, Any]]:
    """Run `fn` in a thread for the duration of the block; its return value lands in the dict."""
    holder: dict[str, Any] = {}
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(fn)
        try:
            yield holder
        finally:
            holder["value"] = future.result()


def git_state() -> dict[str, Any]:
    """The code measured: HEAD, and the files outside bench/ that differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if len(line) > 3]
    return {
        "head": git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted_files_outside_bench": [f for f in changed if not f.startswith("bench/")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke test of every step.")
    parser.add_argument("--skip-profile", action="store_true", help="No py-spy profiles.")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    log_dir = Path(tempfile.mkdtemp(prefix="medic-bench-"))
    started = time.monotonic()
    bench = Bench(sizes, log_dir, profile=not args.skip_profile)
    report: dict[str, Any] = {
        "bench": "throughput",
        "mode": "quick" if args.quick else "full",
        "statistic": "median of the alternating runs (best also given); ratios = medic / plain of each",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_at_start": os.getloadavg()},
        "code": git_state(),
        "sizes": asdict(sizes),
        "medic_settings": "MEDIC_PROFILE=production defaults; PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379/0",
    }
    try:
        bench.setup()
        report["enqueue"] = bench.enqueue()
        if not args.skip_profile:
            for mode in ("medic_single", "medic_batch"):
                rate = report["enqueue"][mode]["median"]
                report[f"profile_enqueue_{mode.removeprefix('medic_')}"] = bench.profile_enqueue(mode, rate)
        report["http"] = bench.http()
        report["end_to_end"] = bench.e2e()
    finally:
        bench.teardown()
    report["where_time_goes"] = where_time_goes(report)
    report["logs"] = str(log_dir)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(report, indent=2))


def _top_lines(section: dict[str, Any] | None, n: int = 4) -> list[str]:
    """The `n` largest steps of a profile as one line each: share, step, ms/job, dominant kind of work."""
    lines = []
    for r in (section or {}).get("by_step", [])[:n]:
        notes = [f"{r['ms_per_job']} ms/job"] if "ms_per_job" in r else []
        notes += [f"{share:.0%} {kind}" for kind, share in r.get("of_which", {}).items() if share >= 0.3][:1]
        lines.append(f"{r['share']:.0%} {r['what']}" + (f" [{'; '.join(notes)}]" if notes else ""))
    return lines


def where_time_goes(report: dict[str, Any]) -> dict[str, Any]:
    """The few largest costs of each profile, in one place."""
    e2e = report.get("end_to_end", {})
    profiles = e2e.get("profiles", {})
    sections: list[tuple[str, dict[str, Any] | None, int]] = [
        ("enqueue_single (bench process, wall clock)", report.get("profile_enqueue_single"), 6),
        ("enqueue_batch (bench process, wall clock)", report.get("profile_enqueue_batch"), 5),
        ("http medic API process (GIL holder)", report.get("http", {}).get("profile_medic_api"), 7),
    ]
    for side in ("medic", "plain"):
        p = profiles.get(side, {})
        sections.append((f"end_to_end {side} worker children (wall clock)", p.get("children_main_thread"), 4))
        sections.append((f"end_to_end {side} worker main process (wall clock)", p.get("main_process"), 4))
    out: dict[str, Any] = {title: _top_lines(section, n) for title, section, n in sections if section}
    for side in ("medic", "plain"):
        if side in e2e:
            out[f"end_to_end {side} CPU ms per job by process group"] = e2e[side]["cpu_ms_per_job_median"]
    http = report.get("http", {})
    for side in ("medic", "plain"):
        if side in http:
            out[f"http {side} CPU ms per request by process group"] = http[side]["cpu_ms_per_request_median"]
    return out


if __name__ == "__main__":
    main()
