"""`WS /jobs/stream`: the caller's job transitions, live, resumable by cursor (docs/api.md).

Close codes: 4400 bad filter or cursor, 4401 no or bad key, 4403 key lacks `read`, 4429 too many
streams for this key, 1013 this process is at `ws_max_connections`, 4008 overflow (after an
`overflow` message carrying the cursor to resume from), 1011 keep-alive ping unanswered (uvicorn),
1013 also when the ledger cannot be reached (reconnect with `since`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from api.deps import find_key
from api.stream_hub import STREAM_CLOSED, ClientQueue, LimitError, Subscriber, Update, get_hub
from worker.errors import LedgerUnavailableError
from worker.ledger import db, queries
from worker.ledger.apikeys import ApiKey, Scope
from worker.settings import get_settings

router = APIRouter(tags=["jobs"])

AUTH_WAIT_S = 5.0
REPLAY_PAGE = 500
REPLAY_WINDOW_IDS = 20_000


class StreamCloseError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


async def _authenticate(ws: WebSocket) -> ApiKey:
    """The Bearer header, or (browsers cannot set headers) the key as the first message:
    the raw key or `{"type": "auth", "key": "<key>"}`."""
    header = ws.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        raw = header[7:].strip()
    else:
        try:
            text = await asyncio.wait_for(ws.receive_text(), AUTH_WAIT_S)
        except TimeoutError:
            raise StreamCloseError(
                4401, "missing API key: send 'Authorization: Bearer <key>' or the key first"
            ) from None
        raw = text.strip()
        if raw.startswith("{"):
            with contextlib.suppress(ValueError, AttributeError):
                raw = str(json.loads(raw).get("key", ""))
    key = await asyncio.to_thread(find_key, raw) if raw else None
    if key is None:
        raise StreamCloseError(4401, "invalid or revoked API key")
    if not key.allows(Scope.READ):
        raise StreamCloseError(4403, "this key lacks the 'read' scope")
    return key


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


def _replay_page(sub: Subscriber, after: int, upto: int) -> list[Update]:
    with db.connect() as conn:
        rows = queries.stream_replay(
            conn, sub.tenant, after=after, upto=upto, limit=REPLAY_PAGE,
            job_ids=sorted(sub.job_ids), queue=sub.queue_name, type_=sub.job_type,
        )  # fmt: skip
    return [Update.from_row(r) for r in rows]


async def _send(ws: WebSocket, message: dict[str, Any]) -> None:
    await ws.send_text(json.dumps(message, separators=(",", ":")))


async def _replay(ws: WebSocket, sub: Subscriber, upto: int, cursor: list[int]) -> None:
    """Send the tenant's events in (cursor, upto] from the ledger; live ones (> upto) wait in the
    client's queue meanwhile, so nothing is missed and nothing sent twice."""
    while cursor[0] < upto and not sub.overflow.is_set():
        # a window of ids per read: the tenant is on `jobs`, not on the events, so an unbounded
        # range would scan every other tenant's events up to the LIMIT; this bounds each read
        window_end = min(cursor[0] + REPLAY_WINDOW_IDS, upto)
        page = await asyncio.to_thread(_replay_page, sub, cursor[0], window_end)
        for update in page:
            await _send(ws, update.message())
            cursor[0] = update.id
        if len(page) < REPLAY_PAGE:
            cursor[0] = window_end  # nothing else of this client's at or below window_end


async def _write(ws: WebSocket, sub: Subscriber, cursor: list[int]) -> None:
    while (item := await sub.queue.get()) is not None:
        update, coalesced = item
        await _send(ws, update.message(coalesced))
        cursor[0] = update.id


async def _drain_reads(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends, to see its close at once."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return


async def _serve(ws: WebSocket, sub: Subscriber, cursor: list[int]) -> None:
    tasks = [
        asyncio.create_task(_write(ws, sub, cursor)),
        asyncio.create_task(_drain_reads(ws)),
        asyncio.create_task(sub.overflow.wait()),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if sub.overflow.is_set():
        STREAM_CLOSED.labels("overflow").inc()
        # The queue is already freed. A reader this slow may not take even this message: a bounded
        # wait, then the socket is dropped (returning closes the transport) with its buffers.
        with contextlib.suppress(Exception):
            overflow = {"type": "overflow", "cursor": str(cursor[0]), "reason": "client too slow: resume with since"}
            # as long as a peer may stay silent before keep-alive drops it anyway
            wait_s = get_settings().ws_ping_timeout_seconds
            await asyncio.wait_for(_send(ws, overflow), wait_s)
            await asyncio.wait_for(ws.close(4008, "overflow: resume with since=<cursor>"), wait_s)
        raise WebSocketDisconnect(4008)


@router.websocket("/jobs/stream")
async def stream(ws: WebSocket) -> None:
    """Transitions of the caller's jobs; see docs/api.md "Live updates"."""
    await ws.accept()
    hub = get_hub()
    sub: Subscriber | None = None
    try:
        key = await _authenticate(ws)
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
        if since is not None and since < upto:
            await _replay(ws, sub, upto, cursor)
        await _serve(ws, sub, cursor)
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
