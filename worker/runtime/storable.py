"""What the ledger can store: JSON that PostgreSQL's JSONB accepts.

Python's json is laxer than JSONB on three counts, and each once raised a DataError deep in a
write (a 500 at submit, a job stuck `running` at finalize): json.dumps writes NaN and Infinity
(JSONB has no such numbers), and a string or key may hold U+0000 or a lone surrogate (JSONB
refuses both; the surrogate one cannot even be encoded as UTF-8).
"""

from __future__ import annotations

import json
import math
from typing import Any


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains the NUL character (\\u0000), which the ledger cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate, which is not valid Unicode"
    return None


def problem(value: Any, loc: str = "") -> tuple[str, str] | None:
    """The first part of `value` the ledger would refuse, as (location, reason); None if storable.

    Walks dicts (keys too), lists and tuples; other types are left to json.dumps, so a value
    this accepts is also one `json.dumps(value, allow_nan=False)` accepts.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return loc or "$", f"{value!r} is not a JSON number"
    if isinstance(value, str):
        reason = _bad_text(value)
        return (loc or "$", reason) if reason else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (reason := _bad_text(key)):
                return f"{loc}.{key!r}" if loc else repr(key), f"key {reason}"
            found = problem(item, f"{loc}.{key}" if loc else str(key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = problem(item, f"{loc}[{i}]")
            if found:
                return found
    return None


def check(value: Any) -> tuple[str, str] | None:
    """Like `problem`, and also refuses what json.dumps itself cannot write (a set, an object)."""
    found = problem(value)
    if found:
        return found
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return "$", str(exc)
    return None


def encoded_size(value: Any) -> int:
    """Bytes of `value` as compact JSON: the measure of the args cap at submit and the result cap
    at finalize (call after `check` passed)."""
    return len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
