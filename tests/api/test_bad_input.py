"""Bad input that used to give a 500 or the wrong code: each is a clear 4xx, nothing written."""

from __future__ import annotations

import base64
import re
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


def test_a_nul_byte_in_a_query_parameter_is_422_not_500(client: httpx.Client) -> None:
    # Bug caught: the filter sent to PostgreSQL, which refuses NUL in text (500).
    for params in ({"type": "5\x00"}, {"queue": "q\x00"}, {"state": "queued", "type": "a\x00b"}):
        response = client.get("/jobs", params=params)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"] == "invalid_args"


def test_a_nul_byte_in_a_batch_items_idempotency_key_is_422_and_writes_nothing(client: httpx.Client) -> None:
    # Bug caught: the key inserted as is, refused by PostgreSQL (500).
    before = _job_count(client)
    item = {"type": "examples.echo", "args": {"message": "x"}, "idempotency_key": "k\x00ey"}
    response = client.post("/jobs/batch", json={"jobs": [item]})
    assert response.status_code == 422, response.text
    assert _job_count(client) == before


def test_a_method_no_route_takes_is_counted_as_other_not_as_a_new_label(stack: str) -> None:
    # Bug caught: the raw method as a label: each method a client sends a new series, kept for the
    # life of the process (uvicorn passes the WebDAV and other registered methods on to the app).
    response = httpx.request("PROPFIND", f"{stack}/jobs", timeout=10)
    assert response.status_code in (401, 405), response.text
    scrape = httpx.get(f"{stack}/metrics", timeout=10).text
    assert 'method="PROPFIND"' not in scrape
    served = r'medic_api_requests_total\{method="other",route="/jobs",status="\d+"\} [1-9]'
    assert re.search(served, scrape), scrape[:2000]
