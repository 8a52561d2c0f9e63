"""A job type's flow-control options (`@job(concurrency_key=..., rate_limit=...)`), checked once
when the job type is defined, and what they make of one job's arguments: its concurrency key and
rate bucket (worker/ledger/records.py `Flow`). Pure: no I/O."""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
MAX_KEY_LENGTH = 200  # a rendered key longer than this is refused (422) rather than cut


def parse_rate(text: str) -> float:
    """`"10/s"`, `"100/m"`, `"5/h"` -> the interval between two starts, in seconds.

    Raises:
        ValueError: not `<number>/<s|m|h>`, or a rate of zero.
    """
    found = _RATE.match(text)
    if found is None:
        raise ValueError(f"rate_limit {text!r} is not <number>/s, /m or /h (e.g. '10/s')")
    count = float(found.group(1))
    if count <= 0:
        raise ValueError(f"rate_limit {text!r} allows nothing")
    return _PER[found.group(2)] / count


@dataclass(frozen=True)
class KeyTemplate:
    """A key taken from a job's arguments: one argument's name (`"account"`) or a template over
    several (`"{account}/{region}"`)."""

    text: str
    names: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, parameters: Collection[str], *, what: str) -> KeyTemplate:
        """Raises ValueError: empty, or naming an argument the function does not take."""
        if not text or not text.strip():
            raise ValueError(f"{what} is empty")
        if "{" in text:
            names = tuple(name for _, name, _, _ in string.Formatter().parse(text) if name is not None)
            template = text
        else:
            names, template = (text,), "{" + text + "}"
        unknown = [n for n in names if not n or n not in parameters]
        if unknown or not names:
            raise ValueError(f"{what} {text!r} names {unknown or 'no'} argument(s) the function does not take")
        return cls(template, names)

    def render(self, args: Mapping[str, Any]) -> str:
        """The key of one job's validated arguments (JSON values; a missing optional one is "")."""
        return self.text.format_map({n: _text(args.get(n)) for n in self.names})


def _text(value: Any) -> str:
    return "" if value is None else str(value)


@dataclass(frozen=True)
class FlowRules:
    """What `@job` declared: at most `concurrency_limit` jobs with one key run at once; starts at
    most one every `rate_interval_s` (per `rate_key` value when given)."""

    concurrency_key: KeyTemplate | None = None
    concurrency_limit: int | None = None
    rate_interval_s: float | None = None
    rate_key: KeyTemplate | None = None

    @classmethod
    def declare(
        cls,
        parameters: Collection[str],
        *,
        concurrency_key: str | None,
        concurrency_limit: int | None,
        rate_limit: str | None,
        rate_limit_key: str | None,
    ) -> FlowRules | None:
        """The rules of `@job`'s options, or None when it declared none.

        Raises:
            ValueError: a limit without a key, a limit under 1, a key naming no argument, a bad rate.
        """
        if concurrency_limit is not None and concurrency_key is None:
            raise ValueError("concurrency_limit needs a concurrency_key")
        if rate_limit_key is not None and rate_limit is None:
            raise ValueError("rate_limit_key needs a rate_limit")
        if concurrency_key is None and rate_limit is None:
            return None
        limit = 1 if concurrency_limit is None else concurrency_limit
        if limit < 1:
            raise ValueError(f"concurrency_limit must be at least 1, not {limit}")
        key = (
            None if concurrency_key is None else KeyTemplate.parse(concurrency_key, parameters, what="concurrency_key")
        )
        rate_key = (
            None if rate_limit_key is None else KeyTemplate.parse(rate_limit_key, parameters, what="rate_limit_key")
        )
        return cls(
            concurrency_key=key,
            concurrency_limit=None if key is None else limit,
            rate_interval_s=None if rate_limit is None else parse_rate(rate_limit),
            rate_key=rate_key,
        )

    def keys(self, job_type: str, tenant: str, args: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """(concurrency key, rate bucket) of one job. A concurrency key is the tenant's own (one
        tenant's account 7 is not another's); a rate is the job type's across every tenant (it
        guards what the job calls), per `rate_key` value when one is given.

        Raises:
            ValueError: a rendered key longer than MAX_KEY_LENGTH.
        """
        flow_key = rate = None
        if self.concurrency_key is not None:
            flow_key = f"{tenant}|{job_type}|{_short(self.concurrency_key.render(args))}"
        if self.rate_interval_s is not None:
            rate = job_type if self.rate_key is None else f"{job_type}|{_short(self.rate_key.render(args))}"
        return flow_key, rate


def _short(key: str) -> str:
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"the key {key[:40]!r}... is {len(key)} characters; at most {MAX_KEY_LENGTH}")
    return key
