"""What every bench shares, once: a private medic run, plain Celery's worker, the numbers, the load.

Each bench runs medic against its own database `medic_bench_<run>` and Redis key prefixes
`bench<run>:` / `benchb<run>:` on the shared PostgreSQL and Redis, so runs never meet each other
or the tests; the machine is shared too, so every bench records how busy it was before each
round (`load_check`), and the code it measured (`header`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.testing.processes import Proc, Processes, wait_for
from worker.testing.servers import delete_keys, pg_admin_execute

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/0"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class MedicRun:
    """The database, key prefixes, environment and processes of one run of medic
    (`MEDIC_PROFILE=profile`); `with MedicRun(...) as medic:` creates it, then stops what it
    started and drops it all.

    Building it puts the environment into os.environ too, so medic code imported in this process
    (enqueue, the ledger) talks to the same database and prefixes as the processes it starts."""

    def __init__(self, profile: str, extra_env: dict[str, str] | None = None, run: str | None = None) -> None:
        self.run = run or uuid.uuid4().hex[:8]
        self.db_name = f"medic_bench_{self.run}"
        self.db_url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.db_name}"
        self.key_prefix = f"bench{self.run}:"
        self.broker_prefix = f"benchb{self.run}:"
        self.plain_prefix = f"bench-plain-{self.run}:"  # plain Celery's, for a bench that compares
        self.env = {
            **os.environ,
            "BENCH_REDIS_URL": REDIS_URL,  # bench/plain.py's
            "BENCH_PLAIN_PREFIX": self.plain_prefix,
            "MEDIC_DATABASE_URL": self.db_url,
            "MEDIC_REDIS_URL": REDIS_URL,
            "MEDIC_KEY_PREFIX": self.key_prefix,
            "MEDIC_BROKER_KEY_PREFIX": self.broker_prefix,
            "MEDIC_PROFILE": profile,
            "MEDIC_JOB_MODULES": "worker.examples",  # the benches run the demo jobs
            "MEDIC_ALLOW_EXAMPLE_JOBS": "true",
            "MEDIC_QUEUES": "bench-*,flood",  # queues are declared: the benches' own
            **(extra_env or {}),
            "PYTHONPATH": str(ROOT),
        }
        os.environ.update(self.env)
        self.log_dir = Path(tempfile.mkdtemp(prefix=f"medic-bench-{self.run}-"))
        self.procs = Processes(self.env, self.log_dir)

    def __enter__(self) -> MedicRun:
        try:
            self.create()
        except BaseException:
            self.drop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.procs.stop_all()
        finally:
            self.drop()

    def create(self) -> None:
        """Settings and Celery re-read from the environment; the database created and migrated."""
        from worker.broker.celery_app import reconfigure
        from worker.ledger.migrate import upgrade
        from worker.settings import reset_settings

        reset_settings()
        reconfigure()
        upgrade(self.db_url)

    def drop(self) -> None:
        """The database and every key of the run gone; call after its processes are stopped."""
        with contextlib.suppress(Exception):  # the database and keys must go even so
            from worker.ledger.db import dispose_engine

            dispose_engine()
        pg_admin_execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        for prefix in (self.key_prefix, self.broker_prefix, self.plain_prefix):
            delete_keys(REDIS_URL, prefix)

    def api_key(self, tenant: str, scopes: str) -> str:
        """A new API key of `tenant` with `scopes` ("read,submit")."""
        from worker.ledger import apikeys, db

        with db.begin() as conn:
            return apikeys.create_key(conn, tenant, apikeys.parse_scopes(scopes), name="bench")

    def plain(self) -> Any:
        """bench/plain.py, plain Celery's app, on the run's own prefix in this process too."""
        import bench.plain as plain

        plain.celery.conf.broker_transport_options = {"global_keyprefix": self.plain_prefix}
        return plain


def start_plain_worker(procs: Processes, name: str, queue: str, concurrency: int, *flags: str) -> Proc:
    """A plain Celery worker of bench/plain.py on `queue`, prefork with `concurrency`, ready."""
    argv = [sys.executable, "-m", "celery", "-A", "bench.plain:celery", "worker", "-Q", queue, "-c", str(concurrency)]
    argv += ["-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO", *flags]
    return ready(procs.start(name, argv))


def ready(proc: Proc) -> Proc:
    """Wait until a Celery worker logs `ready.`; fail with its log if it died first."""
    wait_for(lambda: "ready." in proc.log() or not proc.alive(), 30, 0.1, f"{proc.name} ready")
    assert proc.alive(), proc.log()
    return proc


# ------------------------------------------------------------------------------- the numbers


def summary(values: list[float], *, higher_is_better: bool = True, digits: int = 1) -> dict[str, Any]:
    """Median, best and every run of one measurement, rounded to `digits`."""
    if not values:
        return {"median": None, "best": None, "runs": []}
    best = max(values) if higher_is_better else min(values)
    rounded = [round(v, digits) for v in values]
    return {"median": round(statistics.median(values), digits), "best": round(best, digits), "runs": rounded}


def ratio(medic: dict[str, Any], plain: dict[str, Any], target: float) -> dict[str, Any]:
    """medic / plain of two summaries (median and best), and whether the median meets `target`."""

    def r(key: str) -> float | None:
        return float(round(medic[key] / plain[key], 3)) if medic.get(key) and plain.get(key) else None

    out: dict[str, Any] = {"median": r("median"), "best": r("best"), "target": target}
    out["meets_target_on_median"] = out["median"] is not None and out["median"] >= target
    return out


def percentile_ms(seconds: list[float], q: float, digits: int = 1) -> float | None:
    """The `q` quantile (0..1) of durations in seconds, nearest rank, in ms; None when there are none."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000, digits)


# --------------------------------------------------------------------- the machine and the code


def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_rss_mb(pid: int) -> float:
    """VmRSS of a process, from /proc/<pid>/status, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise ValueError(f"no VmRSS for {pid}")


def pids_named(comm: str) -> list[int]:
    """Every process whose command name is `comm` (e.g. all PostgreSQL backends)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == comm:
                    pids.append(int(entry.name))
    return pids


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK  # less idle and iowait


def load_check(seconds: float = 0.5) -> dict[str, float]:
    """How busy the shared machine is right before a round: 1-min load average and the cores busy
    over `seconds`. Recorded with every round, so a noisy round can be told from a slow one."""
    busy0, t0 = machine_busy_s(), time.monotonic()
    time.sleep(seconds)
    busy = (machine_busy_s() - busy0) / max(time.monotonic() - t0, 1e-9)
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "busy_cores": round(busy, 2)}


class CpuMeter:
    """CPU seconds spent by groups of processes between start() and stop()."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]]) -> None:
        self.groups = groups

    def _snapshot(self) -> dict[str, dict[int, float]]:
        return {name: {p: c for p in pids if (c := proc_cpu(p)) is not None} for name, pids in self.groups().items()}

    def start(self) -> None:
        self._before = self._snapshot()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group since start()."""
        return {
            name: round(sum(cpu - self._before.get(name, {}).get(pid, 0.0) for pid, cpu in pids.items()), 3)
            for name, pids in self._snapshot().items()
        }


def poll_until(done: Callable[[], bool], seconds: float, interval: float = 0.1) -> bool:
    """Poll until `done()` or `seconds` have passed; whether it was done. A bench reports what it
    got by then rather than failing."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def options(doc: str, **defaults: Any) -> argparse.Namespace:
    """The command line: `--name` for each default (a bool is a flag), the module docstring as help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in defaults.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(default), default=default)
    return parser.parse_args()


def header(bench: str) -> dict[str, Any]:
    """What every report starts with: the bench, its command, when it started (UTC), the machine and
    its load, and the code measured (HEAD, and the files outside bench/ that differ from it): the
    provenance every figure the docs quote must carry (tests/bench/test_figures.py)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if len(line) > 3]
    return {
        "bench": bench,
        "command": shlex.join([".venv/bin/python", "-m", f"bench.{bench}", *sys.argv[1:]]),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_at_start": os.getloadavg()},
        "code": {
            "head": git("rev-parse", "--short", "HEAD").strip(),
            "uncommitted_files_outside_bench": [f for f in changed if not f.startswith("bench/")],
        },
    }
