"""The nemesis: carries out a schedule of faults on a running cluster, each in its own thread at its
planned time, and records what it did: wall times of start and end, the host, the pids it hit and,
for pauses, each pid's stopped window (the checker does not count paused time as live)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.nemesis.cluster import Cluster
from tests.nemesis.schedule import WORKERS, Planned

BUSY_WAIT_S = 5.0  # a worker fault waits at most this long for its host to be running a job


def children(pid: int) -> list[int]:
    """Every child of `pid`, whichever of its threads forked it: billiard forks replacement pool
    processes from a thread of its own, and /proc/<pid>/task/<pid>/children lists only the main
    thread's (Proc.children), so a child replaced after a Redis restart would be missed."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found.update(int(c) for c in (task / "children").read_text().split())
    return sorted(found)


def _signal(pids: list[int], sig: signal.Signals) -> list[int]:
    hit = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            hit.append(pid)
    return hit


class HistoryTail:
    """The jobs' lines as they are written, read incrementally (offset per host file), so the
    nemesis can see what runs where without rereading megabytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.offsets: dict[Path, int] = {}
        self.open: dict[int, tuple[str, str]] = {}  # pid -> (job, delivery) it is running now
        self.starts: dict[str, list[tuple[int, float]]] = {}  # job -> (pid, t) of every start line
        self._lock = threading.Lock()

    def poll(self) -> None:
        with self._lock:
            for path in self.root.glob("*/history.jsonl"):
                with open(path, "rb") as f:
                    f.seek(self.offsets.get(path, 0))
                    data = f.read()
                whole = data[: data.rfind(b"\n") + 1]
                self.offsets[path] = self.offsets.get(path, 0) + len(whole)
                for raw in whole.splitlines():
                    with contextlib.suppress(ValueError):
                        self._take(json.loads(raw))

    def _take(self, line: dict[str, Any]) -> None:
        pid = int(line["pid"])
        if line["event"] == "start":
            self.open[pid] = (str(line["job"]), str(line["delivery"]))
            self.starts.setdefault(str(line["job"]), []).append((pid, float(line["t"])))
        elif line["event"] in ("end", "fenced"):
            self.open.pop(pid, None)

    def running(self, pids: list[int]) -> dict[int, str]:
        """pid -> job, for those of `pids` running a job (as far as the lines say)."""
        self.poll()
        with self._lock:
            return {pid: self.open[pid][0] for pid in pids if pid in self.open}

    def rerun_started(self, jobs: dict[int, str], since: float) -> bool:
        """Whether any of these jobs started again, in another process, after `since`."""
        self.poll()
        with self._lock:
            return any(other != pid and t > since for pid, job in jobs.items() for other, t in self.starts.get(job, []))


class Nemesis:
    def __init__(self, cluster: Cluster, seed: int) -> None:
        self.c = cluster
        self.rng = random.Random(seed ^ 0x19)
        self.tail = HistoryTail(cluster.dir / "hosts")
        self.found_dead: list[dict[str, Any]] = []  # processes that had died before a fault was to end them
        self.done: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # A fault that ends a worker host's processes and starts them again holds its host: two
        # at once (a rolling restart stopping the worker a kill_host just started, before it was
        # ready) made the harness, not medic, fail the run (seen in CI, seed 1778301712).
        self._host_busy = {host: threading.Lock() for host in WORKERS}

    # ----------------------------------------------------------------------------- running

    def run(self, schedule: list[Planned], t0: float) -> None:
        """Start a thread per fault, each waiting for t0 + its offset; returns at once."""
        for p in schedule:
            th = threading.Thread(target=self._one, args=(p, t0), name=f"nemesis-{p.kind}-{p.host}", daemon=True)
            th.start()
            self._threads.append(th)

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for th in self._threads:
            th.join(max(0.0, deadline - time.monotonic()))
        return not any(th.is_alive() for th in self._threads)

    def _one(self, p: Planned, t0: float) -> None:
        time.sleep(max(0.0, t0 + p.at - time.time()))
        record: dict[str, Any] = {"kind": p.kind, "host": p.host, "planned_at": p.at, "planned_s": p.seconds,
                                  "params": p.params, "pids": [], "pauses": []}  # fmt: skip
        record["start"] = time.time()
        try:
            getattr(self, p.kind)(p, record)
        except Exception:  # noqa: BLE001 - a fault that could not be carried out is reported, the run goes on
            record["error"] = traceback.format_exc()[-2000:]
        record["end"] = time.time()
        with self._lock:
            self.done.append(record)

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return sorted(self.done, key=lambda r: r["start"])

    # ------------------------------------------------------------------------------ faults

    def partition(self, p: Planned, rec: dict[str, Any]) -> None:
        assert self.c.net is not None
        if p.host in WORKERS:
            self._wait_busy(p.host)
        self.c.net.cut(p.host, "data")
        rec["start"] = time.time()
        try:
            time.sleep(p.seconds)
        finally:
            self.c.net.heal(p.host, "data")

    def latency(self, p: Planned, rec: dict[str, Any]) -> None:
        path = self.c.delay_file(p.host)
        path.write_text(f"{p.params['ms']} {p.params['jitter_ms']}")
        time.sleep(0.3)  # the proxy reads its file every 200 ms
        rec["start"] = time.time()
        try:
            time.sleep(p.seconds)
        finally:
            path.unlink(missing_ok=True)

    def _wait_busy(self, host: str, timeout: float = BUSY_WAIT_S) -> list[int]:
        """Wait (bounded) until a child of `host`'s worker runs a job, so the fault cuts one; the
        busy children (maybe none)."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.c.procs.get(host)
            kids = children(proc.pid) if proc is not None else []
            busy = list(self.tail.running(kids))
            if busy or time.monotonic() > deadline:
                return busy
            time.sleep(0.05)

    def _pause(self, pids: list[int], seconds: float, rec: dict[str, Any]) -> None:
        """SIGSTOP `pids`; SIGCONT them as soon as a job one of them was running has started again
        elsewhere (the worst moment: both executions are then live unless the paused one is
        fenced), or after `seconds` at most."""
        jobs = self.tail.running(pids)
        stopped: dict[int, float] = {}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped[pid] = time.time()  # after the stop is sent: the window counted as paused is never too wide
        rec["pids"] = sorted(stopped)
        rec["jobs_running"] = sorted(set(jobs.values()))
        since = min(stopped.values(), default=time.time())
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                if jobs and self.tail.rerun_started(jobs, since):
                    rec["resumed_on_rerun"] = True
                    time.sleep(self.rng.uniform(0.05, 0.25))
                    break
                time.sleep(0.05)
        finally:
            for pid, at in stopped.items():
                cont = time.time()  # before the SIGCONT: same reason
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                rec["pauses"].append({"pid": pid, "stop": at, "cont": cont})

    def pause_child(self, p: Planned, rec: dict[str, Any]) -> None:
        busy = self._wait_busy(p.host)
        kids = busy or children(self.c.procs[p.host].pid)
        if not kids:
            self._note_if_dead(p.host)
            raise RuntimeError(f"{p.host}: its worker has no child to pause")
        rec["start"] = time.time()
        self._pause([self.rng.choice(kids)], p.seconds, rec)

    def pause_host(self, p: Planned, rec: dict[str, Any]) -> None:
        assert self.c.net is not None
        self._wait_busy(p.host)
        rec["start"] = time.time()
        self._pause(self.c.net.pids(p.host), p.seconds, rec)

    def _note_if_dead(self, role: str) -> None:
        """A process the nemesis is about to end that is already gone died by itself: recorded
        (with its last error line), since the restart that follows would hide it."""
        proc = self.c.procs.get(role)
        if proc is not None and not proc.alive():
            errors = [line for line in proc.log().splitlines() if "CRITICAL" in line or "Error" in line]
            self.found_dead.append({"role": role, "pid": proc.pid, "exit": proc.popen.returncode,
                                    "found_at": time.time(), "last_error": (errors or [""])[-1][:300]})  # fmt: skip

    def kill_host(self, p: Planned, rec: dict[str, Any]) -> None:
        """SIGKILL every process of the host, then, after `seconds`, start its proxy and worker
        again, as a supervisor would."""
        assert self.c.net is not None
        with self._host(p.host, rec):
            self._note_if_dead(p.host)
            self._wait_busy(p.host)
            rec["start"] = time.time()
            rec["pids"] = _signal(self.c.net.pids(p.host), signal.SIGKILL)
            time.sleep(p.seconds)
            rec["restarted_at"] = time.time()
            self.c.start_proxy(p.host)
            self.c.start_worker(p.host)
            rec["ready_at"] = time.time()

    @contextlib.contextmanager
    def _host(self, host: str, rec: dict[str, Any]) -> Iterator[None]:
        """Hold `host` against the other faults that restart its processes; the wait is recorded."""
        asked = time.time()
        with self._host_busy[host]:
            if (waited := time.time() - asked) > 0.05:
                rec.setdefault("waited_for_host_s", {})[host] = round(waited, 2)
            yield

    def restart_redis(self, p: Planned, rec: dict[str, Any]) -> None:
        assert self.c.redis is not None
        rec["pids"] = [pid] if (pid := self.c.redis.pid()) else []
        self.c.redis.stop()
        time.sleep(p.seconds)
        self.c.redis.start()

    def restart_pg(self, p: Planned, rec: dict[str, Any]) -> None:
        assert self.c.pg is not None
        rec["pids"] = [pid] if (pid := self.c.pg.pid()) else []
        self.c.pg.stop(p.params.get("mode", "fast"))
        time.sleep(p.seconds)
        self.c.pg.start()

    def rolling_restart(self, p: Planned, rec: dict[str, Any]) -> None:
        """SIGTERM each worker's main process in turn (a warm shutdown), wait for it to exit, start
        it again and wait until it is ready, then the next."""
        steps = []
        for host in WORKERS:
            with self._host(host, rec):
                self._note_if_dead(host)
                proc = self.c.procs[host]
                rec["pids"].append(proc.pid)
                sent = time.time()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.popen.wait(timeout=60)
                    forced = False
                except subprocess.TimeoutExpired:
                    proc.kill_group(signal.SIGKILL)
                    proc.popen.wait(timeout=10)
                    forced = True
                exited = time.time()
                self.c.start_worker(host)
                steps.append({"host": host, "sigterm": sent, "exited": exited, "ready": time.time(), "forced": forced})
        rec["steps"] = steps
