"""A worker SIGKILLed mid-job, its job recovered by the control loops, all through PgBouncer in
transaction mode: the lease, the heartbeat's extensions, presence and `recover_stuck`'s fenced
requeue cross many transactions on shared server connections. The rest of tests/chaos kills or
restarts Redis and PostgreSQL themselves, which a pooler in between does not change (a restarted
PostgreSQL behind PgBouncer is the pooler's reconnect, not medic's).

tests/chaos/test_worker_death.py's whole-worker test is not imported: it starts the second worker
after the job started, and on a loaded machine that start outlasts the 3 s job, which then ends on
the first worker before the kill (seen here: attempts 1). Here both workers are up first and the
one that took the job is the one killed."""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from tests.chaos.conftest import TERMINAL, submit, wait_job
from tests.ledger_view import assert_no_overlap, reasons
from tests.pgbouncer.conftest import POOL_SIZE, database_of, fresh_session_state, server_sessions
from tests.testjobs import executions
from worker.testing.pgbouncer import PrivatePgBouncer
from worker.testing.processes import Processes, wait_for

pytestmark = pytest.mark.chaos


def test_sigkill_of_the_worker_running_a_job_reruns_it_on_the_other(cprocs: Processes) -> None:
    """Given two workers on one queue and the control loops, all through the pooler,
    When the worker running a job has its whole process group SIGKILLed,
    Then recover_stuck requeues the job and the other worker runs it to success: attempts 2, a
    worker_lost event, the second run after the kill, no overlap."""
    workers = [cprocs.worker(f"pgb-{n}", queues="chaos-pgb", concurrency=1) for n in "ab"]
    cprocs.control_plane()
    tag = uuid.uuid4().hex
    job_id = submit("tests.record", {"tag": tag, "seconds": 4}, queue="chaos-pgb", max_attempts=3)
    first = wait_for(lambda: executions(tag), 30, 0.05, "first execution started")[0]
    [running] = [w for w in workers if int(first["pid"]) in w.children()]
    killed_at = time.time()
    running.kill_group(signal.SIGKILL)

    done = wait_job(job_id, TERMINAL, timeout=90)
    assert done.state == "succeeded" and done.attempts == 2
    assert done.worker is not None and not done.worker.startswith(running.name + "@")
    assert "worker_lost" in reasons(job_id)
    runs = executions(tag)
    assert len(runs) == 2 and runs[0]["end"] == 0, "the first execution died with its worker"
    assert float(runs[1]["start"]) > killed_at
    assert_no_overlap([job_id])


def test_the_control_loops_leave_no_session_state(private_ledger: dict[str, str], bouncer: PrivatePgBouncer) -> None:
    """After the recovery above (control worker, beat, two workers), each server connection of
    this module's ledger is as a new session is."""
    database = database_of(private_ledger)
    fresh = fresh_session_state(database)
    for pid, state in server_sessions(bouncer, database, POOL_SIZE).items():
        assert state == fresh, f"server connection {pid} carries session state"
