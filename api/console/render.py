"""Pages from templates: one Jinja2 environment, the layout's context, and the headers every
console response carries (a strict CSP: the console loads nothing from outside its origin)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jinja2
from fastapi.responses import HTMLResponse

from worker.clock import utcnow
from worker.ledger.apikeys import Scope
from worker.ledger.sessions import Session
from worker.settings import get_settings

HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
PREVIEW_CHARS = 2000


def _ago(stamp: dt.datetime | None) -> str:
    if stamp is None:
        return ""
    seconds = (utcnow() - stamp).total_seconds()
    if seconds < 0:
        return f"in {_span(-seconds)}"
    return f"{_span(seconds)} ago"


def _span(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def _stamp(stamp: dt.datetime | None) -> str:
    return "" if stamp is None else stamp.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _short(text: str, limit: int = PREVIEW_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(ago=_ago, span=_span, stamp=_stamp, pretty=_pretty, short=_short)


def page(template: str, session: Session | None, *, status: int = 200, **context: Any) -> HTMLResponse:
    """A full page: the template inside the layout, with what the layout shows of the session."""
    key = session.key if session else None
    html = ENV.get_template(template).render(
        session=session,
        csrf=session.csrf if session else "",
        can_submit=bool(key and key.allows(Scope.SUBMIT)),
        can_admin=bool(key and key.allows(Scope.ADMIN)),
        flower_url=get_settings().flower_url,
        status=status,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)
