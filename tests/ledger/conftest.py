"""Ledger tests run on both backends: PostgreSQL (this run's database) and SQLite (a temp file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.ledger.make import a_new_job
from worker.ledger import transitions
from worker.ledger.db import make_engine
from worker.ledger.migrate import upgrade
from worker.ledger.records import Job


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


NewJob = Callable[..., Job]


@pytest.fixture
def new_job(engine: sa.Engine) -> NewJob:
    """Insert a queued job through the ledger; keyword arguments override the row."""

    def make(type_: str = "examples.echo", **fields: Any) -> Job:
        new = a_new_job(type_=type_, **fields)
        with engine.begin() as conn:
            return transitions.create_jobs(conn, [new], actor="test", now=new.created_at)[0]

    return make
