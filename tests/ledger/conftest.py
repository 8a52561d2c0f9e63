"""Ledger tests run on both backends: PostgreSQL (this run's database) and SQLite (a temp file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from worker.accept import validate
from worker.accept.validate import JobRequest
from worker.clock import utcnow
from worker.ledger import transitions
from worker.ledger.db import make_engine
from worker.ledger.migrate import upgrade
from worker.ledger.models import JobRow
from worker.settings import get_settings


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest, medic_env: dict[str, str], tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "postgresql":
        eng = make_engine(medic_env["MEDIC_DATABASE_URL"])
    else:
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        upgrade(url)
        eng = make_engine(url)
    yield eng
    eng.dispose()


NewJob = Callable[..., JobRow]


@pytest.fixture
def new_job(engine: sa.Engine) -> NewJob:
    """Insert a queued job through the ledger; keyword arguments override the row."""

    def make(type_: str = "examples.echo", args: dict[str, Any] | None = None, **row: Any) -> JobRow:
        tenant = row.pop("tenant", "ledger-tests")
        base = validate.new_job(
            JobRequest(type_, args if args is not None else {"message": "x"}),
            tenant=tenant,
            s=get_settings(),
            now=utcnow(),
        )
        with engine.begin() as conn:
            return transitions.create_jobs(conn, [{**base.row(), **row}], actor="test", now=base.created_at)[0]

    return make
