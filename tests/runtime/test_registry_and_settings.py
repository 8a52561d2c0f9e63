from __future__ import annotations

import pytest

from worker.errors import InvalidArgsError, UnknownJobTypeError
from worker.runtime.registry import get_spec, job
from worker.settings import Settings


def test_unknown_type_is_refused() -> None:
    with pytest.raises(UnknownJobTypeError):
        get_spec("examples.nope")


def test_args_are_checked_against_the_signature() -> None:
    import tests.testjobs  # noqa: F401 - registers tests.typed

    spec = get_spec("tests.typed")
    assert spec.validate({"count": "3"}) == {"count": 3, "ratio": 1.0, "labels": None}
    for bad in ({}, {"count": "x"}, {"count": 1, "extra": True}, {"count": 1, "labels": "notalist"}):
        with pytest.raises(InvalidArgsError) as info:
            spec.validate(bad)
        assert info.value.details["problems"], bad


def test_stored_args_come_back_typed() -> None:
    spec = get_spec("tests.typed")
    assert spec.load({"count": 2, "labels": ["a"]}) == {"count": 2, "ratio": 1.0, "labels": ["a"]}


def test_job_decorator_keeps_the_function_callable() -> None:
    @job("tests.unit.add")
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert add(1, 2) == 3
    assert get_spec("tests.unit.add").validate({"a": 1}) == {"a": 1, "b": 1}


def test_fast_profile_changes_defaults_but_not_explicit_values() -> None:
    fast = Settings(profile="fast", lease_seconds=9)
    assert fast.lease_seconds == 9
    assert fast.heartbeat_seconds == 0.5
    assert Settings(profile="production").lease_seconds == 4.0


def test_placeholder_flower_password_is_refused() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        Settings(flower_password="changeme")


def test_presence_ttl_must_be_shorter_than_the_lease() -> None:
    """Fails if the check is gone or compares the wrong way (equal is refused too)."""
    for ttl in (10.0, 12.0):
        with pytest.raises(ValueError, match=r"MEDIC_PRESENCE_TTL_SECONDS \(\S+\) must be shorter than MEDIC_LEASE"):
            Settings(lease_seconds=10, presence_ttl_seconds=ttl)
    assert Settings(lease_seconds=10, presence_ttl_seconds=9.5).presence_ttl_seconds == 9.5
    assert Settings(profile="fast").presence_ttl_seconds < Settings(profile="fast").lease_seconds


def test_a_bare_postgresql_url_means_psycopg2_and_another_driver_is_refused() -> None:
    # Bugs caught: postgresql:// left to SQLAlchemy 2.1, which loads psycopg 3 (not installed:
    # ModuleNotFoundError at the first query); a psycopg 3 URL accepted (every async-commit write
    # fails: "cannot insert multiple commands into a prepared statement").
    for bare in ("postgresql://u@h:5432/db", "postgres://u@h:5432/db"):
        assert Settings(database_url=bare).database_url == "postgresql+psycopg2://u@h:5432/db"
    assert Settings(database_url="sqlite:///x.db").database_url == "sqlite:///x.db"
    with pytest.raises(ValueError, match="psycopg2"):
        Settings(database_url="postgresql+psycopg://u@h/db")


DEMO_REFUSED = r"MEDIC_JOB_MODULES names worker\.examples.*MEDIC_ALLOW_EXAMPLE_JOBS=true"


def test_production_refuses_the_demo_jobs_unless_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`examples.crash` kills a worker child: a deployment must not load it by accident."""
    for modules in ("worker.examples", "myapp.jobs, worker.examples"):
        with pytest.raises(ValueError, match=DEMO_REFUSED):
            Settings(profile="production", job_modules=modules, allow_example_jobs=False)
    allowed = Settings(profile="production", job_modules="worker.examples", allow_example_jobs=True)
    assert allowed.job_modules == ["worker.examples"]
    assert Settings(profile="production", job_modules="myapp.jobs", allow_example_jobs=False).job_modules == [
        "myapp.jobs"
    ]
    # as a deployment sets them: from the environment
    for name in ("MEDIC_ALLOW_EXAMPLE_JOBS", "MEDIC_FLOWER_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MEDIC_PROFILE", "production")
    monkeypatch.setenv("MEDIC_JOB_MODULES", "worker.examples")
    with pytest.raises(ValueError, match=DEMO_REFUSED):
        Settings()
    monkeypatch.setenv("MEDIC_ALLOW_EXAMPLE_JOBS", "true")
    assert Settings().job_modules == ["worker.examples"]


def test_the_fast_profile_loads_the_demo_jobs_and_production_loads_none_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings(profile="fast", job_modules="worker.examples", allow_example_jobs=False).job_modules == [
        "worker.examples"
    ]
    monkeypatch.delenv("MEDIC_JOB_MODULES", raising=False)
    assert Settings(profile="production", allow_example_jobs=False).job_modules == []


def test_the_heartbeat_must_beat_within_the_presence_ttl() -> None:
    # Bug caught: a heartbeat slower than the presence TTL accepted: a live worker's presence lapses
    # between beats and recover_stuck takes its running jobs.
    for beat in (6.0, 7.5):
        with pytest.raises(ValueError, match=r"MEDIC_HEARTBEAT_SECONDS \(\S+\) must be shorter than MEDIC_PRESENCE"):
            Settings(heartbeat_seconds=beat, presence_ttl_seconds=6.0, lease_seconds=10)
    ok = Settings(heartbeat_seconds=5.9, presence_ttl_seconds=6.0, lease_seconds=10, consumer_stall_seconds=30)
    assert ok.heartbeat_seconds == 5.9
