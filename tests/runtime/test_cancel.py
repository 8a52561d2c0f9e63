"""Cancel requests that cannot be lost (issue 20, part 3), with real worker processes: a running
job's cancel is a request in the ledger that its worker reads at each heartbeat; the broadcast
only makes it come sooner. The jobs write their history outside the ledger
(tests/runtime/canceljobs.py), and the checks read it."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.api_client import events, submit, wait_state
from tests.conftest import KeyFactory
from tests.history import read as read_history
from worker.settings import get_settings
from worker.testing.processes import Processes, wait_for

MODULES = "worker.examples,tests.testjobs,tests.runtime.canceljobs"


def _dead(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(b")") + 2 :].split()[0] == b"Z"


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=15)


def _started(history: str) -> dict[str, object]:
    return wait_for(lambda: next((e for e in read_history(history) if e["event"] == "start"), None), 30, 0.02,
                    "the job started")  # fmt: skip


def test_a_cancel_whose_broadcast_is_dropped_still_stops_the_job_and_frees_its_slot(
    procs: Processes, make_key: KeyFactory, tmp_path: Path
) -> None:
    """Given a worker with one slot running a job that never asks `cancelled()`, and an API whose
    cancel broadcast is switched off (as if the worker's broker connection were cut at that
    moment), When the job's cancel is requested, Then the worker learns it from the ledger at a
    heartbeat and kills the job after the grace: its process is gone and its history stops within
    heartbeat + grace + 2 s of the request, its events show `cancel_requested` then
    `cancelled`/`stopped`, and the same slot then runs another job."""
    s = get_settings()
    bound = s.heartbeat_seconds + s.cancel_grace_seconds + 2
    queue = f"q-cancel-{uuid.uuid4().hex[:8]}"
    history = str(tmp_path / "history.jsonl")
    worker = procs.worker("cancel-drop", queues=queue, concurrency=1, MEDIC_JOB_MODULES=MODULES)
    _, url = procs.api("cancel-api-quiet", MEDIC_CANCEL_BROADCAST="false", MEDIC_JOB_MODULES=MODULES)
    _, key = make_key()
    with _client(url, key) as client:
        job = submit(client, "cancel.naive", {"seconds": 60, "history": history}, queue=queue)
        pid = int(str(_started(history)["pid"]))

        asked_at = time.time()
        response = client.post(f"/jobs/{job['id']}/cancel")
        assert response.status_code == 202, response.text
        asked = response.json()
        assert asked["state"] == "running" and asked["cancel_requested_at"] is not None

        final = wait_state(client, job["id"], {"cancelled"}, timeout=bound + 30)
        stopped_at = time.time()
        assert stopped_at - asked_at <= bound, f"stopped {stopped_at - asked_at:.2f}s after the request (> {bound}s)"
        assert _dead(pid), "the job's process still runs"
        ticks = [float(str(e["t"])) for e in read_history(history)]
        assert max(ticks) - asked_at <= bound, "the job went on past heartbeat + grace + 2 s"
        assert not [e for e in read_history(history) if e["event"] == "end"]
        assert final["result"] is None and final["finished_at"] is not None
        reasons = [(e["from_state"], e["to_state"], e["reason"]) for e in events(client, job["id"])]
        assert reasons[-2:] == [("running", "running", "cancel_requested"), ("running", "cancelled", "stopped")]
        assert [r for r in reasons if r[2] == "claimed"] == [("queued", "running", "claimed")], "never retried"

        # the one slot is free again: the next job runs on the same worker
        after = submit(client, "examples.echo", {"message": "next"}, queue=queue)
        done = wait_state(client, after["id"], timeout=30)
        assert done["state"] == "succeeded" and done["worker"] == final["worker"]
        assert done["worker_pid"] != pid
    assert worker.alive()


def test_a_cooperative_job_sees_the_request_and_ends_cleanly_before_the_grace(
    procs: Processes, make_key: KeyFactory, tmp_path: Path
) -> None:
    """Given a job that polls `current_job().cancelled()`, on a worker whose heartbeat comes only
    every 20 s, When its cancel is requested (broadcast on), Then the broadcast makes the worker
    read the request from the ledger at once, the job sees it, cleans up and returns: its own
    history has `cancel_seen` then `cleaned_up`, its process was not killed, and the job ends
    `cancelled`/`stopped` (a return after a request is no success)."""
    queue = f"q-cancel-{uuid.uuid4().hex[:8]}"
    history = str(tmp_path / "history.jsonl")
    slow_beat = {"MEDIC_HEARTBEAT_SECONDS": "20", "MEDIC_PRESENCE_TTL_SECONDS": "40", "MEDIC_LEASE_SECONDS": "60",
                 "MEDIC_CONSUMER_STALL_SECONDS": "90", "MEDIC_CANCEL_GRACE_SECONDS": "8"}  # fmt: skip
    procs.worker("cancel-coop", queues=queue, concurrency=1, MEDIC_JOB_MODULES=MODULES, **slow_beat)
    _, url = procs.api("cancel-api", MEDIC_JOB_MODULES=MODULES)
    _, key = make_key()
    with _client(url, key) as client:
        job = submit(client, "cancel.cooperative", {"seconds": 60, "history": history, "cleanup_s": 0.3}, queue=queue)
        pid = int(str(_started(history)["pid"]))
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 202
        # well before the next heartbeat (20 s): only the broadcast can have made it this soon
        final = wait_state(client, job["id"], {"cancelled"}, timeout=10)
        lines = [str(e["event"]) for e in read_history(history)]
        assert lines[-2:] == ["cancel_seen", "cleaned_up"], lines
        assert not _dead(pid), "the job's process was killed: it should have ended on its own"
        assert final["result"] == "stopped cleanly"
        last = events(client, job["id"])[-1]
        assert (last["to_state"], last["reason"], last["detail"]) == (
            "cancelled", "stopped", "returned after the cancel request"
        )  # fmt: skip


def test_a_queued_job_is_cancelled_at_once(stack: str, make_key: KeyFactory) -> None:
    _, key = make_key()
    with _client(stack, key) as client:
        job = submit(client, "examples.echo", {"message": "x"}, queue="nobody-consumes-this")
        response = client.post(f"/jobs/{job['id']}/cancel")
        assert response.status_code == 200 and response.json()["state"] == "cancelled"
        assert response.json()["cancel_requested_at"] is None


@pytest.fixture
def bulk_api(procs: Processes) -> str:
    """An API whose bulk cancel acts on at most 3 jobs per call."""
    return procs.api("bulk-api", MEDIC_MAX_BULK_CANCEL="3")[1]


def _jobs(client: httpx.Client, n: int, type_: str = "examples.echo") -> list[str]:
    args = {"seconds": 1} if type_ == "examples.sleep" else {"message": "x"}
    return [submit(client, type_, args, queue="nobody-consumes-this")["id"] for _ in range(n)]


def test_bulk_cancel_is_tenant_scoped_bounded_and_audited(bulk_api: str, make_key: KeyFactory) -> None:
    """Tenant A cancels by filter: only A's matching jobs, at most 3 per call with `more` saying
    whether others match, each with its own event naming A's key; B's matching jobs stay queued."""
    _, key_a = make_key()
    _, key_b = make_key()
    with _client(bulk_api, key_a) as a, _client(bulk_api, key_b) as b:
        mine = _jobs(a, 5)
        other_type = _jobs(a, 1, "examples.sleep")
        theirs = _jobs(b, 2)
        body = {"type": "examples.echo", "queue": "nobody-consumes-this"}

        first = a.post("/jobs/cancel", json=body)
        assert first.status_code == 200, first.text
        assert (first.json()["cancelled"], first.json()["requested"], first.json()["more"]) == (3, 0, True)
        second = a.post("/jobs/cancel", json=body).json()
        assert (second["cancelled"], second["more"]) == (2, False)
        assert sorted(first.json()["job_ids"] + second["job_ids"]) == sorted(mine)
        assert a.post("/jobs/cancel", json=body).json()["cancelled"] == 0

        for job_id in mine:
            last = events(a, job_id)[-1]
            assert (last["to_state"], last["reason"]) == ("cancelled", "cancelled")
            assert last["actor"].startswith("api:")
        assert a.get(f"/jobs/{other_type[0]}").json()["state"] == "queued", "another type matched"
        for job_id in theirs:
            assert b.get(f"/jobs/{job_id}").json()["state"] == "queued", "another tenant's job was cancelled"


@pytest.mark.parametrize(
    "body",
    [{}, {"state": "succeeded"}, {"colour": "red"}, {"state": None}, {"schedule_id": "not-a-uuid"}, {"type": ""}],
)
def test_a_bad_bulk_filter_is_a_422_and_writes_nothing(
    stack: str, make_key: KeyFactory, body: dict[str, object]
) -> None:
    _, key = make_key()
    with _client(stack, key) as client:
        [job_id] = _jobs(client, 1)
        response = client.post("/jobs/cancel", json=body)
        assert response.status_code == 422, response.text
        assert client.get(f"/jobs/{job_id}").json()["state"] == "queued"
        assert [e["reason"] for e in events(client, job_id)] == ["enqueued"]


def test_bulk_cancel_of_running_jobs_asks_them_to_stop(procs: Processes, make_key: KeyFactory, tmp_path: Path) -> None:
    """A running job matched by a bulk cancel is asked, not killed at once: `requested`, and it
    ends `cancelled`/`stopped` on its own (cooperative)."""
    queue = f"q-cancel-{uuid.uuid4().hex[:8]}"
    history = str(tmp_path / "history.jsonl")
    procs.worker("bulk-run", queues=queue, concurrency=1, MEDIC_JOB_MODULES=MODULES)
    _, url = procs.api("bulk-run-api", MEDIC_JOB_MODULES=MODULES)
    _, key = make_key()
    with _client(url, key) as client:
        job = submit(client, "cancel.cooperative", {"seconds": 60, "history": history, "cleanup_s": 0}, queue=queue)
        queued = submit(client, "cancel.cooperative", {"seconds": 60, "history": history, "cleanup_s": 0}, queue=queue)
        _started(history)
        done = client.post("/jobs/cancel", json={"queue": queue}).json()
        assert (done["cancelled"], done["requested"]) == (1, 1), done
        assert wait_state(client, job["id"], {"cancelled"}, timeout=30)["result"] == "stopped cleanly"
        assert client.get(f"/jobs/{queued['id']}").json()["state"] == "cancelled"
    assert os.path.exists(history)


def test_cancel_and_progress_work_on_a_sqlite_ledger(procs: Processes, tmp_path: Path) -> None:
    """The single-host ledger: a worker and an API on SQLite (broadcast off), `examples.steps`
    reports progress (seen on `GET /jobs/{id}`), its cancel request is read by the heartbeat, and
    the job stops between steps, `cancelled`/`stopped`, with what it did as its result."""
    from worker.ledger import apikeys
    from worker.ledger.db import make_engine
    from worker.ledger.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            key = apikeys.create_key(conn, "sqlite-tenant", apikeys.parse_scopes("submit,read"))
    finally:
        engine.dispose()
    queue = f"q-cancel-{uuid.uuid4().hex[:8]}"
    procs.worker("cancel-sqlite", queues=queue, concurrency=1, MEDIC_DATABASE_URL=url)
    _, api = procs.api("cancel-sqlite-api", MEDIC_DATABASE_URL=url, MEDIC_CANCEL_BROADCAST="false")
    with _client(api, key) as client:
        job = submit(client, "examples.steps", {"steps": 200, "seconds_per_step": 0.1}, queue=queue)
        seen = wait_for(lambda: (j := client.get(f"/jobs/{job['id']}").json())["progress"] and j, 30, 0.1, "progress")
        assert seen["state"] == "running" and 0 < seen["progress"]["fraction"] < 1
        assert client.post(f"/jobs/{job['id']}/cancel").status_code == 202
        final = wait_state(client, job["id"], {"cancelled"}, timeout=30)
        reasons = [e["reason"] for e in events(client, job["id"])]
    assert reasons[-1] == "stopped" and "cancel_requested" in reasons and "progress" in reasons
    assert 0 < final["result"]["steps"] < 200, final


def test_in_a_threads_pool_the_job_is_told_and_ends_cancelled_when_it_returns(inproc_worker: str) -> None:
    """A threads pool kills nothing (the process runs other jobs): the job learns of the request
    from the heartbeat, `examples.steps` stops between steps, and it ends `cancelled`/`stopped`."""
    from tests.ledger_view import job as row
    from worker.accept import enqueue
    from worker.clock import utcnow
    from worker.ledger import db, transitions

    job_id = enqueue("examples.steps", {"steps": 100, "seconds_per_step": 0.05}, tenant="t-inproc",
                     queue=inproc_worker).job.id  # fmt: skip
    wait_for(lambda: row(job_id).progress, 30, 0.05, "the first progress report")
    with db.begin() as conn:
        assert transitions.cancel(conn, job_id, "t-inproc", actor="test", now=utcnow()) is not None
    final = wait_for(lambda: (r := row(job_id)).state == "cancelled" and r, 30, 0.05, "the job cancelled")
    assert 0 < final.result["steps"] < 100, final.result
