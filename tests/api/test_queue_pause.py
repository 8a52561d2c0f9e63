"""Pausing a queue, with real celery workers and the real API: a paused queue starts nothing (its
jobs wait `held`), through a restart of every process; a resume starts each of them once, at
once; a pause may refuse new jobs (429 queue_paused, nothing written); only admins pause.

Executions are recorded outside the ledger by `tests.record` (tests/testjobs.py), so "nothing
started" and "each exactly once" are checked against the jobs' own history as well as the
ledger's `claimed` events. Given / When / Then."""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests import ledger_view
from tests.conftest import KeyFactory
from tests.testjobs import executions
from worker.ledger import db
from worker.ledger.models import job_events, jobs, queue_controls
from worker.testing.processes import Proc, Processes, wait_for

N = 8
QUIET_S = 3.0  # how long a paused queue is watched for a start: 6 dispatch periods (fast profile)


def _queue(kind: str) -> str:
    return f"q-{kind}-{uuid.uuid4().hex[:8]}"  # declared by the `q-*` prefix (tests/conftest.py)


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _submit(c: httpx.Client, queue: str, tag: str, n: int = N) -> list[uuid.UUID]:
    body = {"jobs": [{"type": "tests.record", "args": {"tag": tag}, "queue": queue} for _ in range(n)]}
    response = c.post("/jobs/batch", json=body)
    assert response.status_code == 202, response.text
    return [uuid.UUID(j["id"]) for j in response.json()["jobs"]]


def _states(ids: list[uuid.UUID]) -> Counter[str]:
    with db.connect() as conn:
        return Counter(conn.execute(sa.select(jobs.c.state).where(jobs.c.id.in_(ids))).scalars())


def _claims(ids: list[uuid.UUID]) -> Counter[uuid.UUID]:
    with db.connect() as conn:
        rows = conn.execute(
            sa.select(job_events.c.job_id).where(job_events.c.job_id.in_(ids), job_events.c.reason == "claimed")
        ).scalars()
        return Counter(rows)


def _in_queue(queue: str) -> int:
    with db.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.queue == queue)) or 0)


def _controls(queue: str) -> int:
    with db.connect() as conn:
        return int(
            conn.scalar(sa.select(sa.func.count()).select_from(queue_controls).where(queue_controls.c.queue == queue))
            or 0
        )


def _nothing_starts(ids: list[uuid.UUID], tags: list[str], seconds: float = QUIET_S) -> None:
    """Watch for `seconds`: no claim in the ledger, no execution in the jobs' own history; every
    job `held` at the end. Fails at the first start seen."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        claimed = _claims(ids)
        ran = [e for tag in tags for e in executions(tag)]
        assert not claimed and not ran, f"a paused queue started jobs: claims {dict(claimed)}, executions {ran}"
        time.sleep(0.1)
    assert _states(ids) == Counter({"held": len(ids)}), _states(ids)


def _each_once(ids: list[uuid.UUID], tags: list[str]) -> None:
    """Every job succeeds, claimed once and run once (its own history)."""
    wait_for(lambda: _states(ids) == Counter({"succeeded": len(ids)}), 60, 0.1, "every job succeeded")
    assert _claims(ids) == Counter(dict.fromkeys(ids, 1))
    ran = Counter(str(e["job"]) for tag in tags for e in executions(tag))
    assert ran == Counter({str(i): 1 for i in ids}), ran


def _pause(c: httpx.Client, queue: str, admission: str | None = None) -> dict[str, object]:
    response = c.post(f"/queues/{queue}/pause", json={"admission": admission} if admission else None)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _resume(c: httpx.Client, queue: str) -> dict[str, object]:
    response = c.post(f"/queues/{queue}/resume")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.fixture
def admin(make_key: KeyFactory) -> str:
    return make_key("submit,read,admin")[1]


def _start_all(procs: Processes, queues: str, dispatched: str) -> tuple[list[Proc], str]:
    env = {"MEDIC_DISPATCH_QUEUES": dispatched}
    worker = procs.worker(f"pause-w-{uuid.uuid4().hex[:4]}", queues=queues, concurrency=2, **env)
    control, beat = procs.control_plane(**env)
    api, url = procs.api("pause-api", **env)
    return [worker, control, beat, api], url


def _kill_all(running: list[Proc]) -> None:
    """The worker SIGKILLed, the control plane and the API SIGTERMed: every process gone."""
    worker, *rest = running
    worker.kill_group(signal.SIGKILL)
    worker.popen.wait(timeout=10)
    for proc in rest:
        proc.kill_group(signal.SIGTERM)
    for proc in rest:
        proc.popen.wait(timeout=30)
    assert not any(p.alive() for p in running)


@pytest.mark.slow
def test_a_paused_queue_starts_nothing_through_a_restart_of_every_process_and_resumes_once(
    procs: Processes, admin: str
) -> None:
    """Given a fast-path queue and a dispatched queue, both paused, with a worker, the control
    plane and the API running, When jobs are submitted to both, Then none starts (the fast path's
    are parked `held` at their claim, the dispatched ones stay held); When every process is
    killed and started again, Then still none starts; When both are resumed, Then every job
    succeeds, each run exactly once."""
    fast, disp = _queue("pf"), _queue("pd")
    tags = [f"pause-{uuid.uuid4().hex[:8]}", f"pause-{uuid.uuid4().hex[:8]}"]
    running, url = _start_all(procs, f"{fast},{disp}", disp)
    with _client(url, admin) as c:
        for queue in (fast, disp):
            assert _pause(c, queue)["paused"] is True
        ids = _submit(c, fast, tags[0]) + _submit(c, disp, tags[1])
    # the fast path's messages reach the worker, whose claim parks them: all held, none run
    wait_for(lambda: _states(ids) == Counter({"held": len(ids)}), 30, 0.1, "every job parked held")
    _nothing_starts(ids, tags)

    _kill_all(running)
    running, url = _start_all(procs, f"{fast},{disp}", disp)
    with _client(url, admin) as c:
        listed = {q["queue"]: q for q in c.get("/queues").json()["queues"]}
        assert listed[fast]["paused"] is True and listed[disp]["paused_admission"] == "accept"
        _nothing_starts(ids, tags)

        for queue in (fast, disp):
            resumed = _resume(c, queue)
            assert resumed["paused"] is False and resumed["changed"] is True
    _each_once(ids, tags)
    assert ledger_view.pause_decisions(fast) == ["pause", "resume"]
    assert ledger_view.pause_decisions(disp) == ["pause", "resume"]


@pytest.mark.slow
def test_a_pause_committed_while_messages_are_in_the_broker_parks_them_and_resume_sends_them_at_once(
    procs: Processes, admin: str
) -> None:
    """Given jobs published to a queue no worker consumes yet, When the queue is paused and then a
    worker starts on it, Then each message's claim parks its job `held` and none runs; When the
    queue is resumed (no control plane running: no dispatch loop), Then the resume itself
    dispatches them and each runs once."""
    queue, tag = _queue("pb"), f"pause-{uuid.uuid4().hex[:8]}"
    _, url = procs.api("pause-api")
    with _client(url, admin) as c:
        ids = _submit(c, queue, tag)
        assert _states(ids) == Counter({"queued": N})
        _pause(c, queue)
        procs.worker(f"pause-w-{uuid.uuid4().hex[:4]}", queues=queue, concurrency=2)
        wait_for(lambda: _states(ids) == Counter({"held": N}), 30, 0.1, "every job parked held")
        _nothing_starts(ids, [tag], seconds=1.0)
        resumed = _resume(c, queue)
        assert resumed["dispatched"] == N, resumed
    _each_once(ids, [tag])


def test_admission_refuse_answers_429_queue_paused_and_writes_nothing(stack: str, admin: str) -> None:
    """Given a queue paused with admission "refuse", When jobs are submitted to it (alone or in a
    batch with another queue's), Then 429 queue_paused with a Retry-After, nothing written; When
    it is paused with "accept" instead, or resumed, Then jobs are accepted."""
    queue, other = _queue("pr"), _queue("po")
    echo = {"type": "examples.echo", "args": {"message": "p"}}
    with _client(stack, admin) as c:
        paused = _pause(c, queue, "refuse")
        assert paused["admission"] == "refuse" and paused["changed"] is True
        for response in (
            c.post("/jobs", json={**echo, "queue": queue}),
            c.post("/jobs/batch", json={"jobs": [{**echo, "queue": other}, {**echo, "queue": queue}]}),
        ):
            assert response.status_code == 429, response.text
            assert response.json()["error"] == "queue_paused" and response.json()["queue"] == queue
            assert int(response.headers["Retry-After"]) > 0
        assert _in_queue(queue) == 0 and _in_queue(other) == 0
        listed = {q["queue"]: q for q in c.get("/queues").json()["queues"]}
        assert listed[queue]["paused"] is True and listed[queue]["paused_admission"] == "refuse"

        assert _pause(c, queue, "accept")["admission"] == "accept"
        held = c.post("/jobs", json={**echo, "queue": queue})
        assert held.status_code == 202, held.text
        _pause(c, queue, "refuse")
        _resume(c, queue)
        assert c.post("/jobs", json={**echo, "queue": queue}).status_code == 202
    assert ledger_view.pause_decisions(queue) == ["pause", "pause", "pause", "resume"]


def test_pause_and_resume_are_idempotent(stack: str, admin: str) -> None:
    queue = _queue("pi")
    with _client(stack, admin) as c:
        first, again = _pause(c, queue), _pause(c, queue)
        assert first["changed"] is True and again["changed"] is False
        assert again["paused_at"] == first["paused_at"] and str(again["paused_by"]).startswith("api:")
        resumed, again = _resume(c, queue), _resume(c, queue)
        assert resumed["changed"] is True and again["changed"] is False
        assert again == {**resumed, "changed": False} and again["admission"] is None
    assert ledger_view.pause_decisions(queue) == ["pause", "resume"]


@pytest.fixture
def reader(make_key: KeyFactory) -> Iterator[str]:
    yield make_key("submit,read")[1]


@pytest.mark.parametrize("action", ["pause", "resume"])
def test_a_key_without_admin_is_403_and_nothing_is_written(stack: str, reader: str, action: str) -> None:
    queue = _queue("pn")
    with _client(stack, reader) as c:
        response = c.post(f"/queues/{queue}/{action}")
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
    assert _controls(queue) == 0 and ledger_view.pause_decisions(queue) == []


@pytest.mark.parametrize("queue", ["undeclared-queue", "medic.control", "_kombu.binding.default"])
@pytest.mark.parametrize("action", ["pause", "resume"])
def test_an_unknown_queue_is_422_and_nothing_is_written(stack: str, admin: str, queue: str, action: str) -> None:
    with _client(stack, admin) as c:
        response = c.post(f"/queues/{queue}/{action}")
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "unknown_queue"
    assert _controls(queue) == 0 and ledger_view.pause_decisions(queue) == []


def test_a_bad_admission_is_422(stack: str, admin: str) -> None:
    queue = _queue("pv")
    with _client(stack, admin) as c:
        response = c.post(f"/queues/{queue}/pause", json={"admission": "maybe"})
        assert response.status_code == 422, response.text
    assert _controls(queue) == 0
