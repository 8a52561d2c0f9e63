"""`WS /jobs/stream`: the caller's job transitions, live, resumable by cursor (docs/api.md).

Close codes: 4400 bad filter or cursor, 4401 no or bad key (or none within
`ws_auth_timeout_seconds`), or the key revoked while the stream is open (api/stream_keys.py),
4403 key lacks `read`, 4429 too many streams for this key, 1013 this process is at
`ws_max_connections` or `ws_max_unauthenticated`, or the ledger cannot be reached (reconnect with
`since`), 4008 overflow (after an `overflow` message carrying the cursor to resume from), 4000
the stream's lifetime is over (after a `reconnect` message carrying the cursor), 1011 keep-alive
ping unanswered (uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from prometheus_client import Gauge

from api.deps import SESSION_COOKIE, find_key, find_session
from api.stream_hub import STREAM_CLOSED, ClientQueue, LimitError, Resync, Subscriber, Update, get_hub
from api.stream_keys import get_watch
from api.stream_replay import replay
from worker.errors import LedgerUnavailableError
from worker.ledger.apikeys import ApiKey, Scope
from worker.settings import get_settings

router = APIRouter(tags=["jobs"])

LIFETIME_JITTER = 0.1  # a stream lives 90-100 % of ws_max_lifetime_seconds: a pod's streams do not all end at once
UNAUTHENTICATED = Gauge("medic_stream_unauthenticated", "Stream sockets of this API process without a checked key yet")


class StreamCloseError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class _Unauthenticated:
    """Sockets accepted whose key is not checked yet: bounded, since each costs a socket and a
    coroutine for up to `ws_auth_timeout_seconds` before anyone is known to pay for it."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Raises:
        StreamCloseError: 1013, the process holds `ws_max_unauthenticated` such sockets already.
        """
        limit = get_settings().ws_max_unauthenticated
        if self.count >= limit:
            raise StreamCloseError(1013, f"{limit} streams are authenticating on this API process; retry later")
        self.count += 1
        UNAUTHENTICATED.set(self.count)
        try:
            yield
        finally:
            self.count -= 1
            UNAUTHENTICATED.set(self.count)


_unauthenticated = _Unauthenticated()


async def _key_message(ws: WebSocket) -> str:
    """The key a browser sends as its first message: the raw key or `{"type": "auth", "key": ...}`.
    Its size is capped by uvicorn (`--ws-max-size`, close 1009) before it is read."""
    try:
        message = await asyncio.wait_for(ws.receive(), get_settings().ws_auth_timeout_seconds)
    except TimeoutError:
        raise StreamCloseError(4401, "missing API key: send 'Authorization: Bearer <key>' or the key first") from None
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text") or (message.get("bytes") or b"").decode(errors="replace")
    raw = text.strip()
    if raw.startswith("{"):
        with contextlib.suppress(ValueError, AttributeError):
            raw = str(json.loads(raw).get("key", ""))
    return raw


async def _console_key(ws: WebSocket, cookie: str) -> ApiKey | None:
    """The key of the console session the cookie names, for a socket opened by a page of this
    origin only: a page of another site cannot ride a signed-in browser's cookie (the cookie is
    SameSite=Strict as well; this holds for browsers that ignore it)."""
    origin = ws.headers.get("origin", "")
    if urllib.parse.urlsplit(origin).netloc != ws.headers.get("host", ""):
        raise StreamCloseError(4403, "a console session streams to pages of its own origin only")
    session = await asyncio.to_thread(find_session, cookie)
    return session.key if session is not None else None


async def _authenticate(ws: WebSocket) -> tuple[ApiKey, asyncio.Event]:
    """The Bearer header, or (browsers cannot set headers) the key as the first message. Returns
    the key and the event its revocation sets (api/stream_keys.py)."""
    with _unauthenticated.slot():  # before anything is read
        header = ws.headers.get("authorization", "")
        cookie = ws.cookies.get(SESSION_COOKIE, "")
        if header.lower().startswith("bearer "):
            key = await asyncio.to_thread(find_key, header[7:].strip())
        elif cookie:
            key = await _console_key(ws, cookie)
        else:
            raw = await _key_message(ws)
            key = await asyncio.to_thread(find_key, raw) if raw else None
    if key is None:
        raise StreamCloseError(4401, "invalid or revoked API key")
    if not key.allows(Scope.READ):
        raise StreamCloseError(4403, "this key lacks the 'read' scope")
    return key, get_watch().watch(key.id)


def _subscriber(ws: WebSocket, key: ApiKey, floor: int) -> tuple[Subscriber, int | None]:
    """The client's filters from the query string; raises StreamCloseError(4400) on a bad one."""
    s = get_settings()
    params = ws.query_params
    raw_ids = params.getlist("job_id")
    if len(raw_ids) > s.ws_max_job_ids:
        raise StreamCloseError(4400, f"at most {s.ws_max_job_ids} job_id filters per stream")
    try:
        job_ids = frozenset(uuid.UUID(raw) for raw in raw_ids)
    except ValueError:
        raise StreamCloseError(4400, "job_id must be a UUID") from None
    since: int | None = None
    if "since" in params:
        text = params["since"]
        if not text.isdigit() or len(text) > 19:
            raise StreamCloseError(4400, "since must be a cursor from this stream (a non-negative integer)")
        since = int(text)
    sub = Subscriber(
        tenant=key.tenant,
        key_id=key.id,
        floor=max(floor, since or 0),
        queue=ClientQueue(s.ws_client_queue),
        job_ids=job_ids,
        queue_name=params.get("queue") or None,
        job_type=params.get("type") or None,
    )
    return sub, since


async def _send(ws: WebSocket, message: dict[str, Any]) -> None:
    await ws.send_text(json.dumps(message, separators=(",", ":")))


async def _write(ws: WebSocket, sub: Subscriber, since: int | None, upto: int, cursor: list[int]) -> None:
    """The replay (if the client resumes), then live updates. `cursor` moves only once a message
    is written: uvicorn's send writes to the transport without awaiting after it, so a cancel
    lands before a write, never after one, and `cursor` is exactly the last message sent."""

    async def send(update: Update | Resync, coalesced: int = 0) -> None:
        await _send(ws, update.message(coalesced))
        cursor[0] = update.id

    if since is not None and since < upto:
        await replay(sub, upto, cursor, send)
    while (item := await sub.queue.get()) is not None:
        await send(*item)


async def _drain_reads(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends, to see its close at once."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return


async def _last_word(ws: WebSocket, message: dict[str, Any], code: int, reason: str) -> None:
    """A message naming the cursor to resume from, then the close. A reader too slow to take even
    this is waited for a bounded time (as long as a silent peer is kept by keep-alive anyway),
    then the socket is dropped (returning closes the transport) with its buffers."""
    wait_s = get_settings().ws_ping_timeout_seconds
    with contextlib.suppress(Exception):
        await asyncio.wait_for(_send(ws, message), wait_s)
        await asyncio.wait_for(ws.close(code, reason), wait_s)
    raise WebSocketDisconnect(code)


async def _serve(
    ws: WebSocket, sub: Subscriber, since: int | None, upto: int, revoked: asyncio.Event, cursor: list[int]
) -> None:
    """Until the client leaves, its key is revoked, it overflows or its lifetime is over."""
    lifetime = get_settings().ws_max_lifetime_seconds * random.uniform(1 - LIFETIME_JITTER, 1)
    writer = asyncio.create_task(_write(ws, sub, since, upto, cursor))
    tasks = [
        writer,
        asyncio.create_task(_drain_reads(ws)),
        asyncio.create_task(sub.overflow.wait()),
        asyncio.create_task(revoked.wait()),
        asyncio.create_task(asyncio.sleep(lifetime)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failure = writer.exception() if writer.done() and not writer.cancelled() else None
    if isinstance(failure, LedgerUnavailableError):
        raise failure  # a replay could not read the ledger (any other failure: the socket is gone)
    if revoked.is_set():
        raise StreamCloseError(4401, "API key revoked")
    if sub.overflow.is_set():
        STREAM_CLOSED.labels("overflow").inc()
        # the queue is already freed: the client resumes from the ledger
        overflow = {"type": "overflow", "cursor": str(cursor[0]), "reason": "client too slow: resume with since"}
        await _last_word(ws, overflow, 4008, "overflow: resume with since=<cursor>")
    if tasks[-1].done() and not tasks[-1].cancelled():
        STREAM_CLOSED.labels("lifetime").inc()
        again = {"type": "reconnect", "cursor": str(cursor[0]), "reason": "stream lifetime over: resume with since"}
        await _last_word(ws, again, 4000, "lifetime over: resume with since=<cursor>")


@router.websocket("/jobs/stream")
async def stream(ws: WebSocket) -> None:
    """Transitions of the caller's jobs; see docs/api.md "Live updates"."""
    await ws.accept()
    hub = get_hub()
    sub: Subscriber | None = None
    watched: tuple[uuid.UUID, asyncio.Event] | None = None
    try:
        key, revoked = await _authenticate(ws)
        watched = (key.id, revoked)
        await hub.start()
        upto = hub.released
        sub, since = _subscriber(ws, key, upto)
        try:
            hub.add(sub)
        except LimitError as exc:
            sub = None
            raise StreamCloseError(exc.code, exc.reason) from None
        cursor = [upto if since is None else since]
        await _send(ws, {"type": "subscribed", "cursor": str(cursor[0])})
        await _serve(ws, sub, since, upto, revoked, cursor)
    except StreamCloseError as exc:
        STREAM_CLOSED.labels(str(exc.code)).inc()
        with contextlib.suppress(Exception):
            await ws.close(exc.code, exc.reason)
    except LedgerUnavailableError:
        STREAM_CLOSED.labels("ledger_unavailable").inc()
        # the key check or a replay could not reach the ledger: nothing is lost, the client
        # resumes from its last cursor once it reconnects
        with contextlib.suppress(Exception):
            await ws.close(1013, "ledger unavailable: reconnect with since=<last cursor>")
    except WebSocketDisconnect:
        pass
    finally:
        if sub is not None:
            hub.remove(sub)
        if watched is not None:
            get_watch().unwatch(*watched)
