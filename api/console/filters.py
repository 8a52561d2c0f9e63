"""The jobs page's filter, read from a query string or a form, named as `GET /jobs` names them,
so a console address and an API call say the same thing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.parse
import uuid
from collections.abc import Mapping

from api.deps import tenant_for
from worker.errors import InvalidArgsError
from worker.ledger.apikeys import ApiKey
from worker.ledger.queries import JobFilter
from worker.ledger.states import JobState

FIELDS = ("state", "type", "queue", "tenant", "schedule_id", "workflow_id", "created_after", "created_before",
          "args_contains")  # fmt: skip
STATES = [s.value for s in JobState]


def _uuid(name: str, text: str) -> uuid.UUID | None:
    if not text:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidArgsError(f"{name} must be a UUID, not {text[:60]!r}") from None


def _time(name: str, text: str) -> dt.datetime | None:
    """ISO 8601, as the API takes it, or what a datetime-local field sends; without a zone: UTC."""
    if not text:
        return None
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgsError(f"{name} must be a time such as 2026-12-06T04:00, not {text[:60]!r}") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def _text(name: str, text: str, limit: int) -> str | None:
    if len(text) > limit or "\x00" in text:
        raise InvalidArgsError(f"{name} must be at most {limit} characters")
    return text or None


def job_filter(params: Mapping[str, str], key: ApiKey) -> JobFilter:
    """The filter the parameters name, for the tenant the key may read (its own; any, for admin).

    Raises:
        InvalidArgsError: a state that is not one, a malformed UUID or time, a value too long.
        ForbiddenError: another tenant named by a key without the admin scope.
    """
    get = {name: (params.get(name) or "").strip() for name in FIELDS}
    if get["state"] and get["state"] not in STATES:
        raise InvalidArgsError(f"state must be one of {', '.join(STATES)}")
    return JobFilter(
        tenant=tenant_for(key, _text("tenant", get["tenant"], 100)),
        state=get["state"] or None,
        type=_text("type", get["type"], 200),
        queue=_text("queue", get["queue"], 200),
        schedule_id=_uuid("schedule_id", get["schedule_id"]),
        workflow_id=_uuid("workflow_id", get["workflow_id"]),
        created_after=_time("created_after", get["created_after"]),
        created_before=_time("created_before", get["created_before"]),
        args_contains=_text("args_contains", get["args_contains"], 200),
    )


def as_params(match: JobFilter, own_tenant: str) -> dict[str, str]:
    """The filter as query parameters (the API's names), the tenant left out when it is the key's own."""
    params: dict[str, str] = {}
    for field in dataclasses.fields(match):
        value = getattr(match, field.name)
        name = field.name
        if value is None or (name == "tenant" and value == own_tenant):
            continue
        params[name] = value.isoformat() if isinstance(value, dt.datetime) else str(value)
    return params


def query(params: Mapping[str, str]) -> str:
    return urllib.parse.urlencode(params)
