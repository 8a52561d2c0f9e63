"""A stream's bounds in time and number: its lifetime (closed 4000 with the cursor to resume
from; a client that resumes loses nothing, `medic submit --wait` included), the sockets still
without a key (over the cap: 1013 before anything is read), the wait for the key message; and the
raw test client that must tell a dropped socket from an open one."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests.api.test_stream import add_events, closed_with, metric, open_stream, park_job, recv, subscribed
from tests.api.test_stream_load import DROPPED, RawPeer
from tests.conftest import KeyFactory
from worker.ledger import db, queries
from worker.ops.follow import RESUMES, follow_stream
from worker.testing.processes import Processes, wait_for


def hello(ws: ClientConnection) -> int:
    """`subscribed`'s cursor. A fresh API's tail starts once every transaction open in the
    cluster (other test runs' included) has ended, up to MEDIC_WS_HOLE_WAIT_SECONDS (10 s):
    wait longer than that for the first message."""
    message = recv(ws, 30)
    assert message["type"] == "subscribed", message
    return int(message["cursor"])


@contextlib.contextmanager
def writing(job_id: str, n: int, every: float = 0.05, terminal: bool = False) -> Iterator[threading.Thread]:
    """A thread adding n events to `job_id`, one a transaction, paced (reasons e<i>-1), then,
    if `terminal`, a `succeeded` one (reason done)."""

    def run() -> None:
        for i in range(n):
            add_events(job_id, 1, f"e{i}")
            time.sleep(every)  # pacing a producer, not waiting for a condition
        if terminal:
            with db.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt)"
                        " VALUES (:job, now(), 'running', 'succeeded', 'test', 'done', 1)"
                    ),
                    {"job": uuid.UUID(job_id)},
                )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(60)


def test_a_stream_past_its_lifetime_closes_4000_and_a_resume_loses_nothing(
    procs: Processes, make_key: KeyFactory
) -> None:
    # Bug caught: a stream lived for ever (a revoked key or a moved tenant kept it); the cap must
    # name the cursor to resume from, and resuming from it must lose and repeat nothing.
    _, api = procs.api("lifetime-api", MEDIC_WS_MAX_LIFETIME_SECONDS="1")
    _, key = make_key()
    job = park_job(api, key)
    total = 60
    got: list[str] = []
    closes: list[tuple[int | None, str | None, str]] = []
    with db.connect() as conn:
        cursor = str(queries.max_event_id(conn))  # every event the writer adds comes after it
    deadline = time.monotonic() + 30
    with writing(job, total):
        while len(got) < total and time.monotonic() < deadline:
            with open_stream(api, key, job_id=job, since=cursor) as ws:
                assert hello(ws) == int(cursor)
                said = ""
                with contextlib.suppress(ConnectionClosed):
                    while len(got) < total:
                        message = recv(ws)
                        if message["type"] == "transition":
                            got.append(message["reason"])
                        if message["type"] == "reconnect":
                            said = message["reason"]
                        cursor = message.get("cursor", cursor)
                if ws.close_code is not None:
                    closes.append((ws.close_code, ws.close_reason, said))
    assert got == [f"e{i}-1" for i in range(total)]  # every event once, in order, across closes
    assert closes, "the stream outlived its lifetime"
    assert set(closes) == {
        (4000, "lifetime over: resume with since=<cursor>", "stream lifetime over: resume with since")
    }
    # the server may also have ended the last stream as the client left it
    assert metric(api, 'medic_stream_closed_total{cause="lifetime"}') in (len(closes), len(closes) + 1)


def test_submit_wait_follows_its_job_across_lifetime_closes(procs: Processes, make_key: KeyFactory) -> None:
    # Bug caught: `medic submit --wait` counted each lifetime close as a drop and fell back to
    # polling after RESUMES of them (and took an `overflow` for the end of the stream).
    _, api = procs.api("lifetime-cli-api", MEDIC_WS_MAX_LIFETIME_SECONDS="0.5")
    _, key = make_key()
    job = park_job(api, key)
    shown: list[dict[str, object]] = []
    with writing(job, 60, terminal=True):
        assert follow_stream(api, key, job, time.monotonic() + 60, shown.append)
    # more lifetime closes than the drops it survives
    assert metric(api, 'medic_stream_closed_total{cause="lifetime"}') > RESUMES + 1
    events = httpx.get(f"{api}/jobs/{job}/events", headers={"Authorization": f"Bearer {key}"}).json()["events"]
    assert [m["reason"] for m in shown] == [e["reason"] for e in events]


def test_sockets_over_the_unauthenticated_cap_are_closed_1013_unread(procs: Processes, make_key: KeyFactory) -> None:
    # Bug caught: any number of sockets could sit waiting for their key message, each a socket
    # and a coroutine that nobody authenticated pays for.
    _, api = procs.api("unauth-api", MEDIC_WS_MAX_UNAUTHENTICATED="2", MEDIC_WS_AUTH_TIMEOUT_SECONDS="30")
    _, key = make_key()
    auth = json.dumps({"type": "auth", "key": key})
    with open_stream(api, None) as first, open_stream(api, None) as second:
        wait_for(lambda: metric(api, "medic_stream_unauthenticated") == 2, 10, 0.05, "two sockets await their key")
        with open_stream(api, None) as third:
            with contextlib.suppress(ConnectionClosed):  # a valid key, never read
                third.send(auth)
            assert closed_with(third) == (1013, "2 streams are authenticating on this API process; retry later")
        first.send(auth)
        assert hello(first) > 0
        wait_for(lambda: metric(api, "medic_stream_unauthenticated") == 1, 10, 0.05, "a slot frees")
        with open_stream(api, None) as fourth:  # the slot it held is free again
            fourth.send(auth)
            assert subscribed(fourth) > 0
        second.send(auth)
        assert subscribed(second) > 0
    assert metric(api, "medic_stream_unauthenticated") == 0


def test_a_socket_that_sends_no_key_is_closed_after_the_auth_timeout(procs: Processes) -> None:
    # Bug caught: a socket without a Bearer header waiting for its key message for ever.
    _, api = procs.api("auth-wait-api", MEDIC_WS_AUTH_TIMEOUT_SECONDS="1")
    with open_stream(api, None) as ws:
        code, reason = closed_with(ws)
    assert (code, reason.startswith("missing API key")) == (4401, True)
    assert metric(api, "medic_stream_unauthenticated") == 0


@pytest.mark.parametrize("drop", [False, True])
def test_the_raw_test_client_tells_a_dropped_socket_from_an_open_one(drop: bool) -> None:
    # Bug caught (in the test client): a socket that ended without a close frame drained as
    # "still open", so a stream the server dropped passed for one it kept.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        conn, _ = server.accept()
        accepted.append(conn)
        while b"\r\n\r\n" not in conn.recv(65536):
            pass
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        conn.sendall(b"\x81\x02{}")  # one text frame
        if drop:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        peer = RawPeer(port, "mk_x")
        thread.join(10)
        messages, code = peer.drain(quiet=0.5)
        peer.sock.close()
    finally:
        for conn in accepted:
            conn.close()
        server.close()
    assert messages == [{}]
    assert code == (DROPPED if drop else None)
