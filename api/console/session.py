"""Signing in to the console: an API key exchanged for a session cookie, and the CSRF token
every state-changing form carries.

The cookie is HttpOnly, SameSite=Strict, Secure when MEDIC_CONSOLE_SECURE_COOKIE is on; it holds
a random token whose hash the ledger keeps (worker/ledger/sessions.py). Every request reads the
session back from the ledger, joined to its key: an expired session or a revoked key signs the
browser out at its next request.
"""

from __future__ import annotations

import hmac
import urllib.parse
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from api.deps import SESSION_COOKIE, find_session
from worker.errors import ForbiddenError, InvalidArgsError
from worker.ledger.apikeys import Scope
from worker.ledger.sessions import Session
from worker.settings import get_settings

COOKIE = SESSION_COOKIE
MAX_FORM_FIELDS = 50


class SignInRequiredError(Exception):
    """No live session: the browser is sent to the sign-in page, then back."""

    def __init__(self, back_to: str) -> None:
        super().__init__(back_to)
        self.back_to = back_to


def current_session(request: Request) -> Session | None:
    return find_session(request.cookies.get(COOKIE, ""))


def signed_in(request: Request) -> Session:
    """The request's live session (a sync dependency: FastAPI runs it in its threadpool).

    Raises:
        SignInRequiredError: no cookie, an expired session, or its key revoked.
        ForbiddenError: a key without the 'read' scope (the console only shows what it may read).
    """
    session = current_session(request)
    if session is None:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequiredError(path if request.method == "GET" else "/console")
    if not session.key.allows(Scope.READ):
        raise ForbiddenError("this key lacks the 'read' scope the console needs")
    return session


Viewer = Annotated[Session, Depends(signed_in)]


def set_cookie(response: Response, token: str) -> None:
    s = get_settings()
    response.set_cookie(
        COOKIE, token, max_age=int(s.console_session_seconds), path="/", httponly=True, samesite="strict",
        secure=s.console_secure_cookie,
    )  # fmt: skip


def clear_cookie(response: Response) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=get_settings().console_secure_cookie
    )


def same_origin(request: Request) -> bool:
    """The request's Origin (or Referer) names this host, or the browser sent neither (old or
    non-browser clients; the CSRF token still guards them). A form posted from another site is
    refused before its token is looked at."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None
    return urllib.parse.urlsplit(origin).netloc == request.headers.get("host", "")


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded body of a console form (its size is capped by BodySizeLimit).

    Raises:
        InvalidArgsError: another content type, or too many fields.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    body = await request.body()
    if not body:
        return {}  # an empty post: no token either, refused by check_csrf
    if kind != "application/x-www-form-urlencoded":
        raise InvalidArgsError("the console takes forms (application/x-www-form-urlencoded)")
    pairs = urllib.parse.parse_qsl(body.decode(errors="replace"), keep_blank_values=True)
    if len(pairs) > MAX_FORM_FIELDS:
        raise InvalidArgsError(f"at most {MAX_FORM_FIELDS} form fields")
    return {name: value.strip() for name, value in pairs}


def check_csrf(request: Request, session: Session, form: dict[str, str]) -> None:
    """A state-changing form must come from this origin and carry its session's CSRF token.

    Raises:
        ForbiddenError: another origin, or a missing or wrong token.
    """
    if not same_origin(request):
        raise ForbiddenError("this form was posted from another site")
    if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
        raise ForbiddenError("missing or wrong CSRF token: reload the page and try again")


def install_sign_in_redirect(app: FastAPI) -> None:
    async def _to_sign_in(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequiredError)
        target = "/console/sign-in?" + urllib.parse.urlencode({"next": exc.back_to})
        response = RedirectResponse(target, status_code=303)
        clear_cookie(response)
        return response

    app.add_exception_handler(SignInRequiredError, _to_sign_in)
