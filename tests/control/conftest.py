"""Fixtures of the alert tests (test_alerts*.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.control.webhook import Webhook


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    """A real HTTP server receiving this module's alert webhooks."""
    hook = Webhook()
    yield hook
    hook.close()
    if dump := os.environ.get("MEDIC_TEST_DUMP_WEBHOOKS"):  # the bodies, for docs/operations.md
        Path(dump).write_text(json.dumps(hook.bodies, indent=1))
