"""Where a bench's time goes: CPU seconds per process group from /proc, and py-spy profiles.

Two tools the throughput scenarios share, kept out of them so each scenario reads as "load, then
measure": a CpuMeter (CPU each group of processes used, and how busy the whole machine was), and
py-spy run, read and classified into labelled steps and kinds of work (the leaf of each stack).
Which steps of medic or plain Celery a stack belongs to is bench/throughput_steps.py's business.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.medic_run import ROOT

MEDIC = str(ROOT / "worker") + "/"  # medic's own files, never celery/worker/...
PY_SPY = Path(sys.executable).parent / "py-spy"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ CPU accounting


def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pids_named(comm: str) -> list[int]:
    """Every process whose command name is `comm` (e.g. all PostgreSQL backends)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == comm:
                    pids.append(int(entry.name))
    return pids


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (all cores)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / CLK_TCK, sum(values) / CLK_TCK


def load_check(seconds: float = 0.5) -> dict[str, float]:
    """How busy the (shared) machine is right before a round: 1-min load average and the cores
    busy over `seconds`. Recorded with every round, so a noisy round can be told from a slow one."""
    busy0, _ = machine_busy()
    t0 = time.monotonic()
    time.sleep(seconds)
    busy1, _ = machine_busy()
    return {
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "busy_cores": round((busy1 - busy0) / max(time.monotonic() - t0, 1e-9), 2),
    }


class CpuMeter:
    """CPU seconds spent by groups of processes between start() and stop()."""

    def __init__(self, groups: Callable[[], dict[str, list[int]]]) -> None:
        self.groups = groups

    def _snapshot(self) -> dict[str, dict[int, float]]:
        snap: dict[str, dict[int, float]] = {}
        for name, pids in self.groups().items():
            snap[name] = {pid: cpu for pid in pids if (cpu := proc_cpu(pid)) is not None}
        return snap

    def start(self) -> None:
        self._before = self._snapshot()
        self._machine_before = machine_busy()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, Any]:
        after = self._snapshot()
        busy, _ = machine_busy()
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


def wait_spy(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for a py-spy run to write its file; kill it if it hangs past `timeout`."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


Frame = tuple[str, str]  # (function, file)
Predicate = Callable[[list[Frame]], bool]
Rule = tuple[str, Predicate]


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


def has(func: str | None = None, file: str | None = None) -> Predicate:
    """Some frame of the stack is `func` (in a file whose path contains `file`)."""

    def match(frames: list[Frame]) -> bool:
        return any((func is None or _is(f, func)) and (file is None or file in p) for f, p in frames)

    return match


def anyof(*preds: Predicate) -> Predicate:
    return lambda frames: any(p(frames) for p in preds)


def every(*preds: Predicate) -> Predicate:
    return lambda frames: all(p(frames) for p in preds)


def leaf_in(*files: str, funcs: Iterable[str] | None = None) -> Predicate:
    """The innermost frame is in one of `files` (and, if given, is one of `funcs`)."""
    wanted = set(funcs) if funcs is not None else None

    def match(frames: list[Frame]) -> bool:
        if not frames:
            return False
        func, path = frames[-1]
        return any(f in path for f in files) and (wanted is None or any(_is(func, w) for w in wanted))

    return match


def idle_rule(frames: list[Frame]) -> bool:
    """The worker's event loop waiting in epoll: nothing to do."""
    return bool(frames) and _is(frames[-1][0], "poll") and "eventio" in frames[-1][1]


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
    """The largest categories as rows: share of the samples, ms per job, dominant kinds of work."""
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


def profile_report(
    path: Path,
    rules: list[Rule],
    rest: str,
    *,
    top: int = 6,
    ms_per_job: float | None = None,
    must: Predicate | None = None,
    idle_label: str | None = None,
    thread: str | None = "MainThread",
) -> dict[str, Any]:
    """One py-spy file as JSON: samples by step (`rules`, else `rest`) and by kind of work."""
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
