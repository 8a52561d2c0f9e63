"""The console: the ledger seen and steered in a browser, at /console.

Server-rendered (Jinja2) with a few lines of plain JS for the live job page; every asset served
from here (no CDN). A page is a view over the API's own operations, called with the signed-in
key, so a session sees and does exactly what its key may through the API.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.staticfiles import StaticFiles

from api.console import actions, pages
from api.console.render import page
from api.console.session import current_session, install_sign_in_redirect

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(pages.router)
    app.include_router(actions.router)
    install_sign_in_redirect(app)
    _errors_as_pages(app)


Handler = Callable[[Request, Exception], Awaitable[Response]]
AnyHandler = Callable[[Request, Any], Response | Awaitable[Response]]


def _errors_as_pages(app: FastAPI) -> None:
    """Under /console, an error the API answers with JSON (api/errors.py) is shown as a page
    with the same status, code and message; elsewhere the API's handler answers unchanged."""
    for kind, handler in list(app.exception_handlers.items()):
        if isinstance(kind, type) and issubclass(kind, Exception):
            app.add_exception_handler(kind, _as_page(handler))


def _as_page(handler: AnyHandler) -> Handler:
    async def answer(request: Request, exc: Exception) -> Response:
        answered = handler(request, exc)
        response = await answered if inspect.isawaitable(answered) else answered
        if not request.url.path.startswith("/console") or response.media_type != "application/json":
            return response
        body = json.loads(bytes(response.body))
        session = current_session(request) if response.status_code not in (401, 503) else None
        shown = page(
            "error.html", session, status=response.status_code, code=body.get("error", "error"),
            message=body.get("message", ""),
        )  # fmt: skip
        for name in ("Retry-After", "Allow"):
            if name in response.headers:
                shown.headers[name] = response.headers[name]
        return shown

    return answer
