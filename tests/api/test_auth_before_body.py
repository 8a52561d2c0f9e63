"""Issue 18, item 2: a request with a body is authenticated from its headers before the body is
read. The client here sends only the headers of a max-size POST and waits: the 401 must arrive
while the body is still unsent (FastAPI alone reads and parses the body first, so it waited for
the body and the client got nothing)."""

from __future__ import annotations

import re
import secrets
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import KeyFactory
from worker.ledger import apikeys
from worker.settings import get_settings

WAIT_S = 10.0  # only so a server that waits for the body cannot hang the test: it fails it


def _headers_only(url: str, path: str, authorization: str | None, length: int) -> bytes:
    """Send the headers of a POST announcing `length` body bytes, none of them; return what the
    server answers before any is sent (b"" if it closed without an answer)."""
    parts = urlsplit(url)
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json"]
    lines += [f"Content-Length: {length}"] + ([f"Authorization: {authorization}"] if authorization else [])
    with socket.create_connection((parts.hostname, parts.port or 80), timeout=WAIT_S) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"no answer before the body was sent: the server waits to read it ({answer!r})")
            if not chunk:
                break
            answer += chunk
        return answer


UNAUTHENTICATED = {
    "no key": None,
    "malformed key": "Bearer nope",
    "unknown key": "Bearer " + apikeys.KEY_PREFIX + secrets.token_urlsafe(32),
}
ROUTES = ["/jobs", "/jobs/batch", "/jobs/00000000-0000-0000-0000-000000000000/cancel"]


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("who", sorted(UNAUTHENTICATED))
def test_a_body_without_a_valid_key_is_refused_before_it_is_read(stack: str, who: str, path: str) -> None:
    answer = _headers_only(stack, path, UNAUTHENTICATED[who], get_settings().max_request_bytes)
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert b"www-authenticate: bearer" in answer.lower()


def test_a_body_over_the_limit_is_refused_from_its_headers_too(stack: str) -> None:
    """An 8 MiB Content-Length is a 413 before the key is even looked at: unread either way."""
    answer = _headers_only(stack, "/jobs", None, 8 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 413 "), answer


def test_a_refusal_before_the_body_is_counted_under_its_route(stack: str) -> None:
    _headers_only(stack, "/jobs/batch", None, 100)
    scrape = httpx.get(f"{stack}/metrics", timeout=10).text
    assert re.search(r'medic_api_requests_total\{method="POST",route="/jobs/batch",status="401"\} [1-9]', scrape)


def test_a_valid_key_still_gets_its_body_read(client: httpx.Client) -> None:
    """The key checked before the body is the one the route uses: same tenant, scopes enforced."""
    done = client.post("/jobs", json={"type": "examples.echo", "args": {"message": "x"}, "queue": "void-q"})
    assert done.status_code == 202, done.text
    assert client.get(f"/jobs/{done.json()['id']}").status_code == 200
    too_big = client.post("/jobs", content=b"x" * (get_settings().max_request_bytes + 1))
    assert too_big.status_code == 413 and too_big.json()["error"] == "request_too_large"


def test_a_known_key_without_the_scope_is_still_a_403(stack: str, make_key: KeyFactory) -> None:
    _, key = make_key("read")
    with httpx.Client(base_url=stack, headers={"Authorization": f"Bearer {key}"}, timeout=15) as reader:
        refused = reader.post("/jobs", json={"type": "examples.echo", "args": {"message": "x"}})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
