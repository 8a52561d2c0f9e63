"""The nemesis schedule is a pure function of its seed, runs every fault kind, and never puts two
faults on one host at once."""

from __future__ import annotations

import itertools

from tests.nemesis.schedule import KINDS, MAX_AT_ONCE, plan


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert [p.as_dict() for p in plan(5, 75, 10)] == [p.as_dict() for p in plan(5, 75, 10)]
    assert [p.as_dict() for p in plan(5, 75, 10)] != [p.as_dict() for p in plan(6, 75, 10)]


def test_every_kind_runs_and_no_host_has_two_faults_at_once() -> None:
    for seed in range(30):
        for length, fill in ((75, False), (600, True)):
            schedule = plan(seed, length, 10, fill=fill)
            assert {p.kind for p in schedule} == set(KINDS)
            for a, b in itertools.combinations(schedule, 2):
                if a.at < b.end() and b.at < a.end():
                    assert not (a.hosts() & b.hosts()), (seed, a, b)
            for p in schedule:
                assert sum(1 for q in schedule if q.at <= p.at < q.end()) <= MAX_AT_ONCE, (seed, p)


def test_pauses_outlast_the_lease() -> None:
    for seed in range(30):
        assert all(p.seconds > 10 for p in plan(seed, 75, 10) if p.kind.startswith("pause"))
