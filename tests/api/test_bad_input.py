"""Bad input that used to give a 500 or the wrong code: each is a clear 4xx, nothing written."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx

from worker.settings import get_settings


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _job_count(client: httpx.Client) -> int:
    response = client.get("/jobs", params={"limit": 500})
    assert response.status_code == 200, response.text
    return len(response.json()["jobs"])


def test_a_cursor_with_a_naive_timestamp_is_422_not_500(client: httpx.Client) -> None:
    naive = _cursor("2026-01-01T00:00:00|00000000-0000-0000-0000-000000000000")
    response = client.get("/jobs", params={"cursor": naive})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_args"


def test_cursors_that_are_not_ours_are_422(client: httpx.Client) -> None:
    for bad in ("%%%", _cursor("no separator"), _cursor("2026-01-01T00:00:00+00:00|not-a-uuid"), _cursor("a|b|c")):
        response = client.get("/jobs", params={"cursor": bad})
        assert response.status_code == 422, (bad, response.text)


def test_a_chunked_body_over_the_limit_is_413_and_writes_nothing(client: httpx.Client) -> None:
    """No Content-Length to refuse up front: the limit must hold while the body streams in."""
    limit = get_settings().max_request_bytes
    before = _job_count(client)
    padding = b"x" * (limit + 1024)

    def chunks() -> Iterator[bytes]:
        yield b'{"type": "examples.echo", "args": {"message": "'
        for i in range(0, len(padding), 65536):
            yield padding[i : i + 65536]
        yield b'"}}'

    response = client.post("/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "request_too_large"
    assert _job_count(client) == before
