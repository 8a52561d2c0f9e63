"""Refuse what no route can take before any work is done (pure ASGI middleware): a body from a
caller without a valid key, oversized bodies before they are read into memory, NUL bytes in the
query string, too many requests."""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import AUTHENTICATED, authenticate
from worker.errors import MedicError

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # any other method no route takes: a 405, unread


class AuthBeforeBody:
    """A request with a body to a keyed route (`/jobs...`) is authenticated from its headers
    before one byte of the body is read; without a valid key the body is never read.

    FastAPI reads and parses a route's body before it resolves its dependencies, so without
    this a caller with no key could make the API read and parse up to MEDIC_MAX_REQUEST_BYTES
    per request. The outcome is left in the scope for the route's key dependency (api/deps.py):
    the key, which it then only checks for its scope; or the error, which it raises (401, or 503
    when the ledger cannot answer). A refused request goes on to its route with an empty body in
    place of the client's, so it is routed, answered and counted like any other.
    """

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...] = ("/jobs",)) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in BODY_METHODS
            or not scope["path"].startswith(self.prefixes)
        ):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization")
        try:
            scope[AUTHENTICATED] = await authenticate(header.decode("latin-1") if header is not None else None)
        except MedicError as exc:
            scope[AUTHENTICATED] = exc  # in place: the metrics middleware reads the route from this scope
            await self.app(scope, _without_body(), send)
            return
        await self.app(scope, receive, send)


def _without_body() -> Receive:
    """A receive that gives the app an empty body, then a disconnect: the client's is never read."""
    given = False

    async def receive() -> Message:
        nonlocal given
        if given:
            return {"type": "http.disconnect"}
        given = True
        return {"type": "http.request", "body": b"", "more_body": False}

    return receive


class BodySizeLimit:
    """413 for a body over `max_bytes`: at once from Content-Length, or while a chunked body
    streams in. In the streaming case the 413 is sent the moment the limit is passed and the app
    is told the client left, so nothing is parsed or written; whatever the app answers after that
    (FastAPI turns the cut body into a 400) is dropped."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {"error": "request_too_large", "message": f"request body over {self.max_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class InflightLimit:
    """At most `limit` requests in progress in this process; the next one gets 503 at once.

    An overloaded API that queues requests behind an exhausted connection pool turns a slow
    ledger into timeouts everywhere; refusing fast lets clients and load balancers back off.
    Health probes are never refused.
    """

    def __init__(self, app: ASGIApp, limit: int, exempt_prefixes: tuple[str, ...] = ("/health",)) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt_prefixes
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            body = json.dumps({"error": "overloaded", "message": f"more than {self.limit} requests in progress"})
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1")],
                }
            )
            await send({"type": "http.response.body", "body": body.encode()})
            return
        self.inflight += 1  # one event loop per process: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


class NulInQueryRefusal:
    """422 for a query string holding a NUL byte (`?type=a%00`): PostgreSQL refuses NUL in text,
    so such a filter would reach the ledger only to fail there as a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or b"\x00" not in unquote_to_bytes(scope.get("query_string") or b""):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "invalid_args", "message": "a query parameter holds a NUL byte"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 422,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
