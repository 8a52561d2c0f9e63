from __future__ import annotations

import asyncio

import pytest

from api.limits import InflightLimit
from worker.accept.admission import ACCEPTING, SHEDDING, Watermarks, next_state, retry_after
from worker.control.scalers import ScaleInputs, desired_slots
from worker.settings import Settings

S = Settings(profile="production")
WM = Watermarks(high=100, low=50)


@pytest.mark.parametrize(
    ("state", "depth", "expected"),
    [
        (ACCEPTING, 99, ACCEPTING),
        (ACCEPTING, 100, SHEDDING),
        (SHEDDING, 99, SHEDDING),  # hysteresis: still above low
        (SHEDDING, 51, SHEDDING),
        (SHEDDING, 50, ACCEPTING),
        (ACCEPTING, 60, ACCEPTING),
    ],
)
def test_admission_has_hysteresis(state: str, depth: int, expected: str) -> None:
    assert next_state(state, depth, WM) == expected


def test_hard_limit_is_high_plus_ten_percent_or_twenty() -> None:
    assert Watermarks(100, 50).hard == 120
    assert Watermarks(1000, 500).hard == 1100


@pytest.mark.parametrize(
    ("depth", "rate", "expected"),
    [(150, 10.0, 10), (51, 10.0, 1), (40, 10.0, 1), (10_000, 1.0, 300), (150, 0.0, 300)],
)
def test_retry_after_is_time_to_drain_to_low_clamped(depth: int, rate: float, expected: int) -> None:
    assert retry_after(depth, 50, rate, S) == expected


def _inputs(**overrides: float | int | None) -> ScaleInputs:
    base = dict(depth=0, arrival=0.0, drain=0.0, running=0, current=1, min_slots=1, max_slots=8,
                target_drain_s=30.0, cooldown_s=60.0, seconds_since_change=None)  # fmt: skip
    return ScaleInputs(**{**base, **overrides})  # type: ignore[arg-type]


def test_scaling_follows_littles_law() -> None:
    # 2 running, 4 jobs/s drained -> 0.5 s per job; 10/s arriving + 300 waiting to clear in 30 s
    desired, why = desired_slots(_inputs(depth=300, arrival=10, drain=4, running=2, current=2))
    assert desired == 8  # ceil(0.5 * (10 + 10)) = 10, capped at max 8
    assert "service 0.50s" in why


def test_scaling_up_without_a_rate_doubles() -> None:
    assert desired_slots(_inputs(depth=50, current=2))[0] == 4


def test_scaling_down_waits_for_the_cooldown() -> None:
    idle = dict(depth=0, arrival=0.0, drain=0.0, running=0, current=6)
    assert desired_slots(_inputs(**idle, seconds_since_change=10))[0] == 6
    assert "held by cooldown" in desired_slots(_inputs(**idle, seconds_since_change=10))[1]
    assert desired_slots(_inputs(**idle, seconds_since_change=61))[0] == 1


def test_scaling_stays_within_bounds() -> None:
    assert desired_slots(_inputs(depth=10**6, current=8))[0] == 8
    assert desired_slots(_inputs(min_slots=2, current=2))[0] == 2


def test_inflight_limit_refuses_fast_beyond_the_bound() -> None:
    release = asyncio.Event()
    statuses: list[int] = []

    async def slow_app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        await release.wait()

    limiter = InflightLimit(slow_app, limit=2)  # type: ignore[arg-type]

    async def call(path: str) -> None:
        async def send(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await limiter({"type": "http", "path": path}, None, send)  # type: ignore[arg-type]

    async def scenario() -> None:
        held = [asyncio.create_task(call("/jobs")) for _ in range(2)]
        await asyncio.sleep(0)
        await call("/jobs")  # the third is refused at once
        assert statuses == [503]
        probe = asyncio.create_task(call("/health/live"))  # probes are never refused
        await asyncio.sleep(0)
        assert statuses == [503]
        release.set()
        await asyncio.gather(*held, probe)
        assert limiter.inflight == 0

    asyncio.run(scenario())
