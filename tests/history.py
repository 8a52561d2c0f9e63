"""A history a test job writes outside the ledger, one JSON object per line, read back."""

from __future__ import annotations

import json


def read(history: str) -> list[dict[str, object]]:
    """Every line written so far (none before the job has started)."""
    try:
        with open(history) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
