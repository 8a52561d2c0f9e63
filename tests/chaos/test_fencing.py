"""Self-fencing (worker/runtime/fencing.py): a paused or cut-off execution is stopped before its
job is given to anyone else, so two executions of one job are never live at once.

Each job writes its own history outside the ledger (tests/chaos/fencejobs.py); the checks read
that history, which no fencing in the ledger can tidy up."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from tests.chaos import fencejobs  # noqa: F401 - registers fence.* here: submit() enqueues through the library
from tests.chaos.conftest import TERMINAL, submit, wait_job
from tests.history import read as read_history
from worker.ledger import db, queries
from worker.testing.processes import Processes, wait_for

MODULES = "worker.examples,tests.testjobs,tests.chaos.fencejobs"
SLOW_LINK_MS = 600_000  # the delay proxy holds every byte this long: a partition, sockets open


@dataclass
class Run:
    delivery: str
    pid: int
    start: float
    last: float
    ended: bool


def runs(history: str) -> list[Run]:
    """One Run per delivery, from its lines, in order of start."""
    out: dict[str, Run] = {}
    for line in read_history(history):
        d, t = str(line["delivery"]), float(str(line["t"]))
        if d not in out:
            out[d] = Run(d, int(str(line["pid"])), t, t, False)
        r = out[d]
        r.last = max(r.last, t)
        r.ended = r.ended or line["event"] == "end"
    return sorted(out.values(), key=lambda r: r.start)


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting for its parent (it runs nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(b")") + 2 :].split()[0] == b"Z"


def actors(job_id: uuid.UUID) -> list[tuple[str, str]]:
    with db.connect() as conn:
        return [(e.reason, e.actor) for e in queries.get_events(conn, job_id)]


def started(history: str, n: int = 1) -> list[Run]:
    return wait_for(lambda: len(r := runs(history)) >= n and r, 30, 0.02, f"{n} execution(s) started")


def test_a_stopped_child_is_killed_by_its_main_process_before_the_job_is_given_away(
    cprocs: Processes, tmp_path: Path
) -> None:
    """Given a naive job (it never asks still_owner) in a prefork child, When the child alone is
    SIGSTOPped, Then the worker's main process SIGKILLs it once its lease is no longer proven
    (SIGKILL works on a stopped process), reports the loss at once, and the re-run starts after:
    no line of the first execution after the stop, none of the second before the first was dead."""
    history = str(tmp_path / "history.jsonl")
    cprocs.worker("fence-a", queues="chaos-f1", concurrency=1, MEDIC_JOB_MODULES=MODULES)
    job_id = submit("fence.tick", {"seconds": 6, "history": history, "guarded": False}, queue="chaos-f1")
    [first] = started(history)
    os.kill(first.pid, signal.SIGSTOP)
    stopped = time.time()
    try:
        wait_for(lambda: dead(first.pid), 30, 0.02, "the stopped child killed by its main process")
        killed = time.time()
    finally:
        with suppress(ProcessLookupError):
            os.kill(first.pid, signal.SIGCONT)

    done = wait_job(job_id, TERMINAL, timeout=60)
    assert done.state == "succeeded" and done.attempts == 2
    a, b = runs(history)
    assert a.pid == first.pid and not a.ended
    assert a.last <= stopped, "the first execution wrote nothing after it was stopped"
    assert b.start >= killed - 0.05, "the re-run started only once the first was dead"
    # The worker's own report gave it back, not recover_stuck after lease + margin.
    lost = [actor for reason, actor in actors(job_id) if reason == "worker_lost"]
    assert lost and lost[0].startswith("fence-a@"), actors(job_id)


def test_a_worker_cut_off_from_ledger_and_broker_stops_its_job_before_recovery_reruns_it(
    cprocs: Processes, tmp_path: Path, private_ledger: dict[str, str]
) -> None:
    """Given a naive job on worker A, whose every ledger and Redis byte goes through a proxy, When
    both links go silent (a partition: sockets open, nothing answers, so no revoke reaches A
    either), Then A's heartbeat cannot renew the lease and its fence kills the job's process at the
    lease's end; recover_stuck gives the job to worker B only after lease + margin, so B's run
    starts after A's last line, and A's process is dead."""
    history = str(tmp_path / "history.jsonl")
    control = tmp_path / "delay"
    pg = make_url(private_ledger["MEDIC_DATABASE_URL"])
    redis = urlsplit(private_ledger["MEDIC_REDIS_URL"])
    pg_port, redis_port = _free_port(), _free_port()
    links = [f"{pg_port}:{pg.host}:{pg.port or 5432}", f"{redis_port}:{redis.hostname}:{redis.port or 6379}"]
    cprocs.start("links", [sys.executable, "-m", "tests.nemesis.delayproxy", str(control), *links])
    wait_for(lambda: _accepts(pg_port) and _accepts(redis_port), 20, 0.05, "the links listening")
    cprocs.worker(
        "fence-cut", queues="chaos-f2", concurrency=1, MEDIC_JOB_MODULES=MODULES,
        MEDIC_DATABASE_URL=pg.set(host="127.0.0.1", port=pg_port).render_as_string(hide_password=False),
        MEDIC_REDIS_URL=redis._replace(netloc=f"127.0.0.1:{redis_port}").geturl(),
    )  # fmt: skip
    cprocs.control_plane()
    job_id = submit("fence.tick", {"seconds": 8, "history": history, "guarded": False}, queue="chaos-f2")
    [first] = started(history)
    control.write_text(f"{SLOW_LINK_MS} 0")
    cprocs.worker("fence-other", queues="chaos-f2", concurrency=1, MEDIC_JOB_MODULES=MODULES)

    done = wait_job(job_id, TERMINAL, timeout=90)
    assert done.state == "succeeded"
    a, b = runs(history)[:2]
    assert a.pid == first.pid and not a.ended, "the cut-off execution never finished"
    assert dead(a.pid), "the cut-off execution's process was killed"
    assert b.start > a.last, "the re-run started after the cut-off execution's last line"
    assert ("worker_lost", "control:recover_stuck") in actors(job_id)
    control.write_text("")


def test_a_whole_worker_paused_past_its_lease_runs_no_guarded_step_after_it_resumes(
    cprocs: Processes, tmp_path: Path
) -> None:
    """Given a guarded job (it asks still_owner() before each step) on worker A, When A's main
    process and child are all SIGSTOPped (a frozen host) until the job runs on worker B, and then
    resumed, Then A's execution writes nothing after the resume and its process is killed."""
    history = str(tmp_path / "history.jsonl")
    a = cprocs.worker("fence-frozen", queues="chaos-f3", concurrency=1, MEDIC_JOB_MODULES=MODULES)
    cprocs.control_plane()
    job_id = submit("fence.tick", {"seconds": 8, "history": history, "guarded": True}, queue="chaos-f3")
    [first] = started(history)
    a.kill_group(signal.SIGSTOP)
    stopped = time.time()
    try:
        cprocs.worker("fence-thawed", queues="chaos-f3", concurrency=1, MEDIC_JOB_MODULES=MODULES)
        started(history, 2)
    finally:
        a.kill_group(signal.SIGCONT)
    resumed = time.time()
    wait_for(lambda: dead(first.pid), 30, 0.02, "the resumed execution's process killed")
    done = wait_job(job_id, TERMINAL, timeout=60)
    assert done.state == "succeeded"
    first_run, second = runs(history)[:2]
    assert first_run.pid == first.pid and not first_run.ended
    assert first_run.last <= stopped, f"a step ran {first_run.last - resumed:.3f}s after the resume"
    assert second.start > first_run.last


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True
