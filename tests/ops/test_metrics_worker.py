"""A real prefork worker's /metrics: the counts of jobs of every outcome, summed over its children."""

from __future__ import annotations

import json
import os
import signal
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests import ledger_view
from tests.ops import pooljobs  # noqa: F401 - registers tests.pool_timeout for enqueue()
from tests.testjobs import executions
from worker.accept import enqueue
from worker.testing.processes import Processes, free_port, wait_for


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def finished(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], queue: str) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["type"], dict(labels)["outcome"]): v
        for (name, labels), v in samples.items()
        if name == "medic_jobs_finished_total" and dict(labels).get("queue") == queue
    }


def test_worker_metrics_count_every_outcome_across_prefork_children(procs: Processes) -> None:
    queue = f"q-metrics-{uuid.uuid4().hex[:6]}"
    port = free_port()
    procs.worker("metrics-worker", queues=queue, concurrency=2, MEDIC_METRICS_PORT=str(port))
    ok = [enqueue("examples.echo", {"message": str(i)}, queue=queue).job.id for i in range(4)]
    failing = enqueue("examples.fail", {}, queue=queue, max_attempts=2).job.id
    slow = enqueue("examples.sleep", {"seconds": 30}, queue=queue, timeout=1, max_attempts=2).job.id
    for job_id in [*ok, failing, slow]:
        wait_for(lambda j=job_id: ledger_view.job(j).state in ("succeeded", "dead"), 60, 0.1, f"job {job_id} ends")

    want = {
        ("examples.echo", "succeeded"): 4.0,
        ("examples.fail", "failed"): 1.0,  # attempt 1 of 2
        ("examples.fail", "dead"): 1.0,  # attempt 2: no attempts left
        ("examples.sleep", "timed_out"): 1.0,
        ("examples.sleep", "dead"): 1.0,
    }
    # The counter moves just after the outcome is committed: poll, then the counts must be exact.
    got = wait_for(lambda: finished(scrape(port), queue) == want and finished(scrape(port), queue), 20, 0.2,
                   "every outcome counted")  # fmt: skip
    assert got == want
    samples = scrape(port)
    durations = samples[("medic_job_duration_seconds_count", (("queue", queue), ("type", "examples.echo")))]
    assert durations == 4.0
    assert samples[("medic_job_queue_wait_seconds_count", (("queue", queue),))] == 8.0  # every claimed run
    children = {p for p in procs.procs[0].children()}
    assert len(children) == 2, "two prefork children wrote the values the main process served"
    # every process that ran a job has a pool gauge; at rest none holds a connection
    capacity = {dict(k[1])["process"]: v for k, v in samples.items() if k[0] == "medic_db_pool_capacity"}
    assert len(capacity) >= 1 and set(capacity.values()) == {20.0}, capacity  # 2 x MEDIC_DB_POOL_SIZE 10
    checked_out = [v for k, v in samples.items() if k[0] == "medic_db_pool_checked_out"]
    assert checked_out and sum(checked_out) == 0, checked_out


def _count(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_a_child_killed_under_a_job_counts_worker_lost(procs: Processes) -> None:
    """SIGKILL the child running a job: its main process counts `worker_lost` (attempts left),
    then, when the retry's child is killed too, `dead`. Fails if MedicRequest's report of a lost
    child does not count the run (the child can count nothing: it is gone)."""
    queue = f"q-metrics-lost-{uuid.uuid4().hex[:6]}"
    port = free_port()
    worker = procs.worker("lost-worker", queues=queue, concurrency=1, MEDIC_METRICS_PORT=str(port),
                          MEDIC_LOG_FORMAT="json")  # fmt: skip
    tag = uuid.uuid4().hex
    job_id = enqueue("tests.hang", {"tag": tag}, queue=queue, max_attempts=2, timeout=120).job.id
    # No control plane runs here: only the worker's main process can give a lost run back.
    for attempt in (1, 2):
        runs = wait_for(lambda a=attempt: len(executions(tag)) >= a and executions(tag), 30, 0.05, f"run {attempt}")
        os.kill(int(runs[attempt - 1]["pid"]), signal.SIGKILL)
    wait_for(lambda: ledger_view.job(job_id).state == "dead", 30, 0.1, "dead after its second lost run")
    want = {("tests.hang", "worker_lost"): 1.0, ("tests.hang", "dead"): 1.0}
    got = wait_for(lambda: finished(scrape(port), queue) == want and finished(scrape(port), queue), 20, 0.2,
                   "the lost runs counted")  # fmt: skip
    assert got == want
    # The main process's line for each report names the job (it runs no job: the fields are its own)
    lines = [json.loads(ln) for ln in worker.log().splitlines() if ln.startswith("{") and str(job_id) in ln]
    reports = [ln for ln in lines if ln["logger"] == "worker.runtime.lost_child"]
    assert len(reports) == 2, lines
    assert all(ln["job_id"] == str(job_id) and ln["queue"] == queue and ln["reason"] == "worker_lost"
               and ln["tenant"] and ln["worker"] for ln in reports), reports  # fmt: skip


def test_a_pool_checkout_that_times_out_is_counted(procs: Processes) -> None:
    """A job holds every connection of a pool of 1 + 1 and asks for one more: the scrape shows
    exactly one timeout, and one wait (that checkout waited 0.2 s, then gave up), no other: the
    two checkouts that made the pool's connections found room. Fails if the ledger's pool-timeout
    or pool-wait hook is not called or not counted in a worker child."""
    queue = f"q-metrics-pool-{uuid.uuid4().hex[:6]}"
    port = free_port()
    modules = "worker.examples,tests.testjobs,tests.ops.pooljobs"
    procs.worker("pool-worker", queues=queue, concurrency=1, MEDIC_METRICS_PORT=str(port), MEDIC_JOB_MODULES=modules)
    assert _count(scrape(port), "medic_db_pool_timeouts_total") == 0
    assert _count(scrape(port), "medic_db_pool_waits_total") == 0
    job_id = enqueue("tests.pool_timeout", {}, queue=queue, max_attempts=1).job.id
    wait_for(lambda: ledger_view.job(job_id).state == "succeeded", 30, 0.1, "the job ran")
    assert ledger_view.job(job_id).result == "ledger unavailable: TimeoutError"
    samples = scrape(port)
    assert _count(samples, "medic_db_pool_timeouts_total") == 1
    assert _count(samples, "medic_db_pool_waits_total") == 1
    assert _count(samples, "medic_db_pool_wait_seconds_total") >= 0.2  # the pool's timeout: it waited that long
    [labels] = [dict(k[1]) for k in samples if k[0] == "medic_db_pool_timeouts_total"]
    assert labels["process"].startswith("worker:"), labels
    [waited] = [dict(k[1]) for k in samples if k[0] == "medic_db_pool_waits_total"]
    assert waited == labels, "counted against the same process"
