"""Workers die, jobs hang: every job still ends, and never runs twice at once. The tests that take
`broker` run on Redis and on RabbitMQ (the 60 s one stays on Redis: its subject is the lease, and
a minute per broker is too dear)."""

from __future__ import annotations

import os
import signal
import time
import uuid

from tests.brokers.selected import Broker
from tests.chaos.conftest import TERMINAL, submit, wait_job
from tests.conftest import switched_env
from tests.ledger_view import assert_no_overlap, job, reasons
from tests.testjobs import executions
from worker.control.timeouts import ACTOR as ENFORCE_TIMEOUTS
from worker.ledger import db, queries
from worker.testing.processes import Processes, wait_for


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigkill_of_a_whole_worker_reruns_its_job_elsewhere(broker: Broker, cprocs: Processes) -> None:
    """Given a job running on worker A, a second worker B and the control loops,
    When A's whole process group is SIGKILLed,
    Then the job is re-run on B and succeeds: attempts 2, a worker_lost event, no overlap."""
    # Both workers are up before the job: one started after it may take longer to start (a loaded
    # machine) than the job takes to end, and the kill would then find nothing to kill.
    a = cprocs.worker("chaos-a", queues="chaos1", concurrency=1)
    b = cprocs.worker("chaos-b", queues="chaos1", concurrency=1)
    cprocs.control_plane()
    tag = uuid.uuid4().hex
    job_id = submit("tests.record", {"tag": tag, "seconds": 3}, queue="chaos1", max_attempts=3)
    first = wait_for(lambda: executions(tag), 30, 0.05, "first execution started")[0]
    victim, survivor = (a, b) if int(first["pid"]) in a.children() else (b, a)
    killed_at = time.time()
    victim.kill_group(signal.SIGKILL)

    done = wait_job(job_id, TERMINAL, timeout=60)
    assert done.state == "succeeded"
    assert done.attempts == 2
    assert done.worker is not None and done.worker.startswith(f"{survivor.name}@")
    assert "worker_lost" in reasons(job_id)
    runs = executions(tag)
    assert len(runs) == 2
    assert runs[0]["end"] == 0, "the first execution died with its worker"
    assert float(runs[1]["start"]) > killed_at, "the re-run started only after the first was dead"
    assert_no_overlap([job_id])


def test_sigkill_of_only_the_prefork_child_reruns_the_job(broker: Broker, cprocs: Processes) -> None:
    """Given a job running in a prefork child, When only that child is SIGKILLed,
    Then the worker reports the loss at once and the job is re-run and succeeds."""
    w = cprocs.worker("chaos-child", queues="chaos2", concurrency=1)
    cprocs.control_plane()
    tag = uuid.uuid4().hex
    job_id = submit("tests.record", {"tag": tag, "seconds": 3}, queue="chaos2", max_attempts=3)
    first = wait_for(lambda: executions(tag), 30, 0.05, "first execution started")[0]
    assert int(first["pid"]) in w.children()
    killed_at = time.time()
    os.kill(int(first["pid"]), signal.SIGKILL)

    done = wait_job(job_id, TERMINAL, timeout=60)
    assert done.state == "succeeded"
    assert done.attempts == 2
    assert "worker_lost" in reasons(job_id)
    runs = executions(tag)
    assert len(runs) == 2 and float(runs[1]["start"]) > killed_at
    assert w.alive(), "the worker itself survives the loss of a child"
    assert_no_overlap([job_id])


def test_a_job_that_always_kills_its_process_is_dead_after_max_attempts(broker: Broker, cprocs: Processes) -> None:
    """Given examples.crash with max_attempts 3, When it runs, Then it is dead after exactly 3 attempts."""
    cprocs.worker("chaos-crash", queues="chaos3", concurrency=1)
    cprocs.control_plane()
    job_id = submit("examples.crash", {}, queue="chaos3", max_attempts=3)
    done = wait_job(job_id, TERMINAL, timeout=60)
    assert done.state == "dead"
    assert done.attempts == 3
    assert reasons(job_id).count("claimed") == 3
    assert reasons(job_id).count("worker_lost") == 3
    assert_no_overlap([job_id])


def test_a_hanging_job_is_killed_retried_and_finally_dead(cprocs: Processes) -> None:
    """Given a job that hangs swallowing its soft limit (tests.hang: examples.hang that records
    each attempt's pid) with timeout 2 s and max_attempts 2, on a worker of two processes (so a
    first attempt left alive would not hold up the second),
    When it runs, Then each attempt is timed_out and each attempt's process killed, and the job
    ends dead."""
    cprocs.worker("chaos-hang", queues="chaos4", concurrency=2)
    cprocs.control_plane()
    tag = uuid.uuid4().hex
    job_id = submit("tests.hang", {"tag": tag}, queue="chaos4", timeout=2, max_attempts=2)
    done = wait_job(job_id, TERMINAL, timeout=60)
    assert done.state == "dead"
    assert done.attempts == 2
    assert reasons(job_id).count("timeout") == 4  # running -> timed_out -> queued|dead, twice
    runs = executions(tag)
    assert len(runs) == 2 and [r["end"] for r in runs] == [0, 0], runs
    pids = [int(r["pid"]) for r in runs]
    assert done.worker_pid == pids[-1], (done.worker_pid, pids)
    for attempt, pid in enumerate(pids, 1):
        wait_for(lambda p=pid: not _alive(p), 10, 0.1, f"attempt {attempt}'s hanging process {pid} killed")
    assert_no_overlap([job_id])


def test_a_hung_job_celery_would_not_kill_for_a_minute_is_killed_by_enforce_timeouts(
    broker: Broker, cprocs: Processes
) -> None:
    """Given a job that swallows its soft limit, published with a hard limit 60 s past its 2 s
    timeout (the enqueuing process's grace), and the control loop on a 1 s grace,
    When it overruns, Then only enforce_timeouts can act: it kills the process (revoke) and
    moves the job through timed_out to dead."""
    cprocs.worker("chaos-hang-loop", queues="chaos12", concurrency=1)
    cprocs.control_plane(MEDIC_TIMEOUT_GRACE_SECONDS="1")
    tag = uuid.uuid4().hex
    # send() sets time_limit = timeout + grace of the PUBLISHING process: here, 2 + 60 s
    with switched_env({"MEDIC_TIMEOUT_GRACE_SECONDS": "60"}):
        job_id = submit("tests.hang", {"tag": tag}, queue="chaos12", timeout=2, max_attempts=1)
    pid = int(wait_for(lambda: executions(tag), 30, 0.05, "the hang started")[0]["pid"])
    done = wait_job(job_id, TERMINAL, timeout=40)
    assert done.state == "dead"
    wait_for(lambda: not _alive(pid), 10, 0.1, "the hung process killed by the loop's revoke")
    with db.connect() as conn:
        events = [(e.to_state, e.actor) for e in queries.get_events(conn, job_id)]
    assert ("timed_out", ENFORCE_TIMEOUTS) in events, events
    assert events[-1] == ("dead", ENFORCE_TIMEOUTS), events
    runs = executions(tag)
    assert len(runs) == 1 and runs[0]["end"] == 0, runs
    assert_no_overlap([job_id])


def test_a_live_job_far_longer_than_its_lease_is_never_rerun(cprocs: Processes) -> None:
    """Given a 5 s lease and the control loops, When a job runs for 30 s (six leases),
    Then its heartbeat keeps the lease: one execution, attempts 1 (a short visibility timeout
    in plain Celery would have re-delivered it)."""
    env = {"MEDIC_LEASE_SECONDS": "5", "MEDIC_HEARTBEAT_SECONDS": "1", "MEDIC_PRESENCE_TTL_SECONDS": "4"}
    cprocs.worker("chaos-long", queues="chaos11", concurrency=2, **env)
    cprocs.control_plane(**env)
    tag = uuid.uuid4().hex
    job_id = submit("tests.record", {"tag": tag, "seconds": 30}, queue="chaos11", timeout=90)
    done = wait_job(job_id, TERMINAL, timeout=80)
    assert done.state == "succeeded"
    assert done.attempts == 1
    runs = executions(tag)
    assert len(runs) == 1
    assert "worker_lost" not in reasons(job_id)
    assert_no_overlap([job_id])
    assert job(job_id).heartbeat_at > job(job_id).started_at
