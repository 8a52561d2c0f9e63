"""WS /jobs/stream on an API of the test's own: slow readers (coalescing, overflow, bounded
memory, a fast client unaffected), keep-alive pings, connection limits."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.api.test_stream import closed_with, metric, open_stream, recv, subscribed
from tests.conftest import KeyFactory
from worker.ledger import db
from worker.ops import processes
from worker.testing.processes import Processes, free_port, wait_for


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def make_jobs(tenant: str, n: int) -> list[uuid.UUID]:
    """n queued jobs of `tenant` written straight into the ledger (no broker: nothing runs them)."""
    with db.begin() as conn:
        rows = conn.execute(
            sa.text(
                "INSERT INTO jobs (id, type, queue, tenant, args, state, max_attempts, timeout_s, backoff_s,"
                " delivery_id, created_at, updated_at) SELECT gen_random_uuid(), 'tests.typed', 'q-stream', :t,"
                " '{}'::jsonb, 'queued', 1, 60, 1, gen_random_uuid(), now(), now() FROM generate_series(1, :n)"
                " RETURNING id"
            ),
            {"t": tenant, "n": n},
        )
        return [r[0] for r in rows]


def add_spread_events(hot: list[uuid.UUID], cold: list[uuid.UUID], n: int, offset: int) -> None:
    """n events in one transaction: even ones to the hot jobs in turn, odd ones to the cold jobs."""
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt)"
                " SELECT CASE WHEN g % 2 = 0 THEN (:hot)[1 + (g / 2) % cardinality(:hot)]"
                " ELSE (:cold)[1 + (g / 2) % cardinality(:cold)] END,"
                " now(), 'queued', 'queued', 'test', 'load-' || g, 0 FROM generate_series(:a, :b) g"
            ),
            {"hot": hot, "cold": cold, "a": offset, "b": offset + n - 1},
        )


def test_slow_readers_coalesce_or_overflow_while_a_fast_one_keeps_up(procs: Processes, make_key: KeyFactory) -> None:
    queue_size = 200
    api_proc, api = procs.api("stream-api", MEDIC_WS_CLIENT_QUEUE=str(queue_size))
    port = int(api.rsplit(":", 1)[1])
    tenant, key = make_key()
    jobs = make_jobs(tenant, 2000)
    hot, cold = jobs[:3], jobs[3:]
    # 30,000, not 10,000: on loopback the kernel's send buffer of one socket grows to tcp_wmem's
    # max (4 MB here), which alone swallows 10,000 messages of ~300 bytes without the API noticing
    total, per_txn = 30_000, 2000

    fast_got: list[dict[str, Any]] = []
    with contextlib.ExitStack() as streams:

        def slow(**params: Any) -> RawPeer:
            """A client that reads nothing: a raw socket with a small receive buffer, set before
            connect so the kernel does not grow it (loopback would otherwise absorb megabytes).
            Library clients keep reading into their own memory, so they are not slow enough."""
            peer = RawPeer(port, key, query=str(httpx.QueryParams(params)), rcvbuf=8192)
            streams.callback(peer.sock.close)
            return peer

        slow_all = slow()
        slow_hot = slow(job_id=[str(j) for j in hot])
        fast = streams.enter_context(open_stream(api, key))
        subscribed(fast)

        def read_fast() -> None:
            while len(fast_got) < total:
                fast_got.append(recv(fast, 30))

        reader = threading.Thread(target=read_fast, daemon=True)
        reader.start()
        rss_before = rss_kb(api_proc.pid)
        for offset in range(0, total, per_txn):
            add_spread_events(hot, cold, per_txn, offset)
        committed = time.monotonic()
        reader.join(60)
        fast_done = time.monotonic()
        rss_after = rss_kb(api_proc.pid)

        # the fast client got every transition, in order, promptly: the slow ones held nobody up
        assert len(fast_got) == total
        assert [m["reason"] for m in fast_got] == [f"load-{g}" for g in range(total)]
        assert fast_done - committed < 15.0
        # each slow client costs at most its bounded queue (plus socket buffers), not 10,000 updates
        assert rss_after - rss_before < 40_000, f"API RSS grew {rss_after - rss_before} kB"

        # the unfiltered slow client (1,997 distinct cold jobs) cannot be coalesced: overflow
        got_all, close_code = slow_all.drain()
        assert got_all[-1]["type"] == "overflow", (len(got_all), close_code, got_all[-1])
        assert close_code == 4008
        delivered = [m for m in got_all if m["type"] == "transition"]
        cursor = got_all[-1]["cursor"]
        assert not delivered or delivered[-1]["cursor"] == cursor
        with open_stream(api, key, since=cursor) as resumed:
            subscribed(resumed)
            rest = [recv(resumed) for _ in range(total - len(delivered))]
        reasons = [m["reason"] for m in delivered + rest]
        assert reasons == [f"load-{g}" for g in range(total)]  # the resume filled the gap exactly

        # the slow client of 3 hot jobs was coalesced: latest state of each job kept, no overflow
        got_hot, close_code = slow_hot.drain(quiet=1.0)
        assert close_code is None, (
            close_code
        )  # still open (not closed, not dropped): coalescing kept it under its bound
        got_hot = got_hot[1:]  # after "subscribed"
    assert all(m["type"] == "transition" for m in got_hot)
    assert sum(m["coalesced"] for m in got_hot) > 0
    assert len(got_hot) + sum(m["coalesced"] for m in got_hot) == total // 2
    cursors = [int(m["cursor"]) for m in got_hot]
    assert cursors == sorted(cursors)
    last_of = {m["job_id"]: m["reason"] for m in fast_got if m["job_id"] in {str(j) for j in hot}}
    assert {m["job_id"]: m["reason"] for m in got_hot} == last_of


def open_stream_url(api: str, **params: Any) -> str:
    from tests.api.test_stream import ws_url

    return ws_url(api, **params)


DROPPED = -1  # RawPeer.drain: the socket ended without a close frame


class RawPeer:
    """A WebSocket client on a bare socket: it reads only when the test says so, and never
    answers a ping."""

    def __init__(self, port: int, key: str, query: str = "", rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        nonce = base64.b64encode(os.urandom(16)).decode()
        path = "/jobs/stream" + (f"?{query}" if query else "")
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {key}\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        return chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self._recv()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame (the server's frames are never masked or fragmented here)."""
        b0, b1 = self._take(2)
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(self._take(2))
        elif length == 127:
            length = int.from_bytes(self._take(8))
        return b0 & 0x0F, self._take(length)

    def drain(self, quiet: float = 10.0) -> tuple[list[dict[str, Any]], int | None]:
        """The text messages up to the server's close frame (and its code), or until `quiet` s of
        silence (code None: still open). A socket dropped without a close frame is DROPPED, never
        None: a stream the server gave up on must not pass for one it kept."""
        self.sock.settimeout(quiet)
        out: list[dict[str, Any]] = []
        try:
            while True:
                opcode, payload = self.frame()
                if opcode == 1:
                    out.append(dict(json.loads(payload)))
                elif opcode == 8:
                    return out, int.from_bytes(payload[:2])
        except TimeoutError:
            return out, None
        except (EOFError, ConnectionResetError):
            return out, DROPPED


def test_a_peer_that_stops_answering_pings_is_closed_within_the_timeout(procs: Processes, make_key: KeyFactory) -> None:
    interval, timeout = 0.5, 1.0
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    procs.http_server("ping-api", processes.api_cmd("127.0.0.1", port, ws_ping=(interval, timeout)), api)
    _, key = make_key()
    with open_stream(api, key) as healthy:  # answers pings (the client library does): stays open
        subscribed(healthy)
        dead = RawPeer(port, key)
        opened = time.monotonic()
        opcodes = []
        with contextlib.suppress(EOFError):
            while True:  # read (pings arrive) but never answer them
                opcodes.append(dead.frame()[0])
        closed_after = time.monotonic() - opened
        dead.sock.close()
        assert 9 in opcodes and opcodes[-1] == 8, opcodes  # pinged, then closed
        assert closed_after < interval + timeout + 1.5, f"closed after {closed_after:.1f}s"
        with pytest.raises(TimeoutError):  # idle for several ping rounds, but answering: still open
            healthy.recv(timeout=2 * (interval + timeout))


def test_connection_limits_close_with_a_clear_code(procs: Processes, make_key: KeyFactory) -> None:
    _, api = procs.api(
        "limits-api", MEDIC_WS_MAX_CONNECTIONS="3", MEDIC_WS_MAX_CONNECTIONS_PER_KEY="2", MEDIC_WS_MAX_JOB_IDS="2"
    )
    _, key1 = make_key()
    _, key2 = make_key()
    _, key3 = make_key()
    ids = [str(uuid.uuid4()) for _ in range(3)]
    with open_stream(api, key1, job_id=ids) as ws:
        assert closed_with(ws) == (4400, "at most 2 job_id filters per stream")
    with contextlib.ExitStack() as streams:
        for k in (key1, key1, key2):
            subscribed(streams.enter_context(open_stream(api, k)))
        with open_stream(api, key1) as ws:
            code, reason = closed_with(ws)
            assert (code, "2 streams" in reason) == (4429, True)
        with open_stream(api, key3) as ws:
            code, reason = closed_with(ws)
            assert (code, "3 streams" in reason) == (1013, True)
    assert metric(api, 'medic_stream_closed_total{cause="4429"}') == 1
    assert metric(api, 'medic_stream_closed_total{cause="1013"}') == 1
    # every stream above was let go: the slots are free again
    wait_for(lambda: _opens(api, key3), 10, 0.2, "a stream slot frees after a close")


def _opens(api: str, key: str) -> bool:
    with open_stream(api, key) as ws:
        return recv(ws)["type"] == "subscribed"


def test_a_tail_started_while_a_lower_id_is_uncommitted_still_delivers_it(
    procs: Processes, make_key: KeyFactory
) -> None:
    """The tail starts at the ledger's end: an id below it may belong to a transaction still
    open. A client resuming at that moment must get it once it commits, not a replay without it."""
    _, api = procs.api("fresh-api")  # its tail starts with the first stream below
    tenant, key = make_key()
    job = make_jobs(tenant, 1)[0]
    insert = sa.text(
        "INSERT INTO job_events (job_id, at, from_state, to_state, actor, reason, attempt)"
        " VALUES (:job, now(), 'queued', 'queued', 'test', :reason, 0) RETURNING id"
    )
    with db.begin() as conn:
        before = conn.execute(insert, {"job": job, "reason": "before"}).scalar_one()
    with db.get_engine().connect() as t1:
        t1.begin()
        t1.execute(insert, {"job": job, "reason": "slow-commit"})  # a lower id, not committed yet
        with db.begin() as conn:
            conn.execute(insert, {"job": job, "reason": "fast-commit"})
        with open_stream(api, key, since=str(before)) as ws:
            t1_open = time.monotonic()
            commit = threading.Timer(1.0, t1.commit)
            commit.start()
            try:
                assert subscribed(ws) == before
                got = [recv(ws)["reason"], recv(ws)["reason"]]
            finally:
                commit.join()
    assert got == ["slow-commit", "fast-commit"]
    assert time.monotonic() - t1_open < 8.0


def test_a_ledger_that_cannot_be_reached_closes_the_stream_with_1013(procs: Processes, make_key: KeyFactory) -> None:
    nowhere = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/nothing"
    _, api = procs.api("no-ledger-api", MEDIC_DATABASE_URL=nowhere)
    _, key = make_key()  # known to the test ledger; this API cannot check it
    with open_stream(api, key) as ws:
        code, reason = closed_with(ws)
    assert (code, reason.startswith("ledger unavailable")) == (1013, True)
