"""WS /jobs/stream against a real uvicorn with a real client (`websockets`): order, resume by
cursor, the insert-vs-commit hole race, tenant scoping, auth and filters."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import KeyFactory
from worker.ledger import db
from worker.testing.processes import wait_for

PARKED = "nobody-consumes-this"  # a declared queue no worker reads: jobs stay queued


def ws_url(http_url: str, **params: Any) -> str:
    query = str(httpx.QueryParams(params))
    return http_url.replace("http://", "ws://") + "/jobs/stream" + (f"?{query}" if query else "")


def open_stream(http_url: str, key: str | None, **params: Any) -> ClientConnection:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    ws = connect(ws_url(http_url, **params), additional_headers=headers, open_timeout=10)
    return ws


def recv(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    return dict(json.loads(ws.recv(timeout=timeout)))


def subscribed(ws: ClientConnection) -> int:
    hello = recv(ws)
    assert hello["type"] == "subscribed", hello
    return int(hello["cursor"])


def transitions(ws: ClientConnection, n: int, timeout: float = 20.0, *, hand_only: bool = True) -> list[dict[str, Any]]:
    """The next n transitions; `hand_only` skips a parked job's enqueue event (from_state None),
    which the tail may release after the stream opened."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        msg = recv(ws, max(0.1, deadline - time.monotonic()))
        assert msg["type"] == "transition", msg
        if not (hand_only and msg["from_state"] is None):
            got.append(msg)
    return got


def nothing_within(ws: ClientConnection, seconds: float, *, allow_enqueue: bool = True) -> bool:
    """No transition (a parked job's enqueue event aside, unless not allowed) arrives within `seconds`."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = recv(ws, left)
        except TimeoutError:
            return True
        if not allow_enqueue or msg.get("from_state") is not None or msg.get("reason") != "enqueued":
            raise AssertionError(f"unexpected message: {msg!r}")
    return True


def park_job(api: str, key: str) -> str:
    """A job that stays queued (nobody reads its queue): its events we then write by hand."""
    r = httpx.post(
        f"{api}/jobs",
        json={"type": "tests.typed", "args": {"count": 1}, "queue": PARKED},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def add_events(job_id: str, n: int, tag: str = "t") -> None:
    """n transitions of `job_id` in one transaction, straight into the ledger (fast, exact)."""
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt) "
                "SELECT :job, now(), 'queued', 'queued', 'test', :tag || '-' || g, g FROM generate_series(1, :n) g"
            ),
            {"job": uuid.UUID(job_id), "tag": tag, "n": n},
        )


@pytest.fixture
def tenant_key(make_key: KeyFactory) -> str:
    return make_key()[1]


def test_every_transition_of_a_job_arrives_in_order(stack: str, tenant_key: str) -> None:
    with open_stream(stack, tenant_key) as ws:
        subscribed(ws)
        r = httpx.post(
            f"{stack}/jobs",
            json={"type": "tests.fail_then_succeed", "args": {"tag": uuid.uuid4().hex, "failures": 1}},
            headers={"Authorization": f"Bearer {tenant_key}"},
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        got: list[dict[str, Any]] = []
        while not got or got[-1]["to_state"] != "succeeded":
            got.extend(transitions(ws, 1, timeout=30, hand_only=False))
    events = httpx.get(f"{stack}/jobs/{job_id}/events", headers={"Authorization": f"Bearer {tenant_key}"}).json()
    expected = [(e["from_state"], e["to_state"], e["reason"]) for e in events["events"]]
    assert [(m["from_state"], m["to_state"], m["reason"]) for m in got] == expected
    assert len(got) >= 5  # queued, running, queued (retry), running, succeeded
    cursors = [int(m["cursor"]) for m in got]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    assert {m["job_id"] for m in got} == {job_id}
    assert [m["attempt"] for m in got if m["to_state"] == "running"] == [1, 2]


def test_a_dropped_stream_resumes_with_exactly_the_missed_events(stack: str, tenant_key: str) -> None:
    job_id = park_job(stack, tenant_key)
    with open_stream(stack, tenant_key, job_id=job_id) as ws:
        subscribed(ws)
        add_events(job_id, 5, "before")
        seen = transitions(ws, 5)
    last = seen[-1]["cursor"]
    add_events(job_id, 7, "missed")  # while disconnected
    with open_stream(stack, tenant_key, job_id=job_id, since=last) as ws:
        assert subscribed(ws) == int(last)
        add_events(job_id, 3, "after")  # live, possibly while the replay runs
        resumed = transitions(ws, 10)
        add_events(job_id, 1, "marker")  # a duplicate or anything extra would come before it
        assert transitions(ws, 1)[0]["reason"] == "marker-1", [m["reason"] for m in resumed]
    reasons = [m["reason"] for m in resumed]
    assert reasons == [f"missed-{i}" for i in range(1, 8)] + [f"after-{i}" for i in range(1, 4)]
    cursors = [int(m["cursor"]) for m in seen + resumed]
    assert cursors == sorted(set(cursors))


def test_an_id_committed_after_a_higher_one_is_not_skipped(stack: str, tenant_key: str) -> None:
    """The sequence race: T1 takes id a, T2 takes b > a and commits first. A tail that moved to b
    would never see a. The stream must deliver a, then b, in that order."""
    job_id = park_job(stack, tenant_key)
    insert = sa.text(
        "INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt) "
        "VALUES (:job, now(), 'queued', 'queued', 'test', :reason, 0)"
    )
    with open_stream(stack, tenant_key, job_id=job_id) as ws:
        subscribed(ws)
        engine = db.get_engine()
        with engine.connect() as t1:
            t1.begin()
            t1.execute(insert, {"job": uuid.UUID(job_id), "reason": "first-id"})  # id a, not committed
            add_events(job_id, 1, "second-id")  # id b > a, committed
            assert nothing_within(ws, 1.0)  # b is held back behind the open hole a
            t1.commit()
        got = transitions(ws, 2)
    assert [m["reason"] for m in got] == ["first-id", "second-id-1"]
    assert int(got[0]["cursor"]) < int(got[1]["cursor"])


def test_a_rolled_back_id_does_not_stall_the_stream(stack: str, tenant_key: str) -> None:
    """A hole whose transaction rolled back is given up as soon as PostgreSQL shows that every
    transaction running when it was seen has ended: well before ws_hole_wait_seconds (10 s)."""
    job_id = park_job(stack, tenant_key)
    insert = sa.text(
        "INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt) "
        "VALUES (:job, now(), 'queued', 'queued', 'test', 'rolled-back', 0)"
    )
    with open_stream(stack, tenant_key, job_id=job_id) as ws:
        subscribed(ws)
        with db.get_engine().connect() as t1:
            t1.begin()
            t1.execute(insert, {"job": uuid.UUID(job_id)})
            add_events(job_id, 1, "kept")
            assert nothing_within(ws, 0.6)
            started = time.monotonic()
            t1.rollback()
        got = transitions(ws, 1, timeout=8)
        waited = time.monotonic() - started
    assert [m["reason"] for m in got] == ["kept-1"]
    assert waited < 3.0, f"a rolled-back id held the stream {waited:.1f}s"
    assert metric(stack, 'medic_stream_holes_given_up_total{how="rolled_back"}') >= 1


def metric(api: str, name: str) -> float:
    """One sample of the API's /metrics (0 when absent)."""
    for line in httpx.get(f"{api}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_tenant_b_never_sees_tenant_a_jobs(stack: str, make_key: KeyFactory) -> None:
    """A positive control, not a quiet window: B's own event is written after A's secrets, so
    with events released in id order, any of A's that leaked would arrive before B's."""
    _, key_a = make_key()
    _, key_b = make_key()
    job_id = park_job(stack, key_a)
    job_b = park_job(stack, key_b)
    both = [job_id, job_b]
    with contextlib.ExitStack() as streams:
        ws_a = streams.enter_context(open_stream(stack, key_a, job_id=job_id))
        spies = [  # B by A's job id, B unfiltered, B replaying from the start of the ledger
            streams.enter_context(open_stream(stack, key_b, job_id=both)),
            streams.enter_context(open_stream(stack, key_b)),
            streams.enter_context(open_stream(stack, key_b, job_id=both, since=0)),
        ]
        for ws in (ws_a, *spies):
            subscribed(ws)
        add_events(job_id, 3, "secret")
        add_events(job_b, 1, "control")
        assert len(transitions(ws_a, 3)) == 3
        for ws in spies:
            [first] = transitions(ws, 1)  # a parked job's enqueue event is skipped
            assert (first["job_id"], first["reason"]) == (job_b, "control-1"), first


def closed_with(ws: ClientConnection) -> tuple[int | None, str]:
    def closed() -> bool:
        try:
            ws.recv(timeout=0.2)
        except ConnectionClosed:
            return True
        except TimeoutError:
            pass
        return False

    wait_for(closed, 10, 0.0, "server closes the stream")
    assert ws.close_code is not None
    return ws.close_code, ws.close_reason or ""


@pytest.mark.parametrize(
    ("params", "code"),
    [({"since": "abc"}, 4400), ({"job_id": "not-a-uuid"}, 4400), ({"since": "-1"}, 4400)],
)
def test_bad_filters_are_refused_with_4400(stack: str, tenant_key: str, params: dict[str, str], code: int) -> None:
    with open_stream(stack, tenant_key, **params) as ws:
        assert closed_with(ws)[0] == code


def test_a_bad_or_missing_key_is_refused_and_a_first_message_key_works(stack: str, make_key: KeyFactory) -> None:
    with open_stream(stack, "mk_nonsense") as ws:
        assert closed_with(ws)[0] == 4401
    with open_stream(stack, None) as ws:  # browser style: the key as the first message
        ws.send(json.dumps({"type": "auth", "key": "mk_wrong"}))
        assert closed_with(ws)[0] == 4401
    _, read_key = make_key("read")
    with open_stream(stack, None) as ws:
        ws.send(json.dumps({"type": "auth", "key": read_key}))
        subscribed(ws)  # fails unless the key message opened the stream ("subscribed")
    _, submit_only = make_key("submit")
    with open_stream(stack, submit_only) as ws:
        assert closed_with(ws) == (4403, "this key lacks the 'read' scope")


def test_a_replay_and_the_tail_cross_a_wide_gap_of_ids(stack: str, tenant_key: str) -> None:
    """Sequences jump (a crash loses up to 32 cached values; a rolled-back bulk insert burns
    thousands): the replay reads in bounded id windows and must cross empty ones; the tail must
    walk over a gap wider than its hole budget without stalling or iterating id by id."""
    job_id = park_job(stack, tenant_key)
    add_events(job_id, 2, "low")
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence('job_events', 'id'),"
                " nextval(pg_get_serial_sequence('job_events', 'id')) + 50000)"
            )
        )
    add_events(job_id, 2, "high")
    with open_stream(stack, tenant_key, since=0) as ws:
        subscribed(ws)
        replayed = transitions(ws, 4)
        add_events(job_id, 1, "live")
        live = transitions(ws, 1)
    assert [m["reason"] for m in replayed + live] == ["low-1", "low-2", "high-1", "high-2", "live-1"]
    assert int(replayed[2]["cursor"]) - int(replayed[1]["cursor"]) > 50000
