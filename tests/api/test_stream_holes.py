"""The stream tail's hole ranges (api/stream_holes.py), without a database: a range costs the same
whatever its width, and a hole is given up only when a read covered it under a snapshot whose
xmin has passed the xmax armed on it."""

from __future__ import annotations

from api.stream_holes import MIN_AGE_S, Gap, Holes

OLD = MIN_AGE_S + 1.0  # a time at which a gap seen at 0.0 is old enough to arm


def holes(*spans: tuple[int, int], seen_at: float = 0.0) -> Holes:
    h = Holes()
    for lo, hi in spans:
        h.add(Gap(lo, hi, seen_at))
    return h


def test_taking_an_id_splits_its_range_and_counts_what_is_left() -> None:
    h = holes((10, 20), (30, 1_000_029))
    assert h.ids == 11 + 1_000_000 and len(h) == 2
    assert h.take(15) is not None and h.spans() == [(10, 14), (16, 20), (30, 1_000_029)]
    assert h.take(10) is not None and h.take(20) is not None and h.take(500_000) is not None
    assert h.spans() == [(11, 14), (16, 19), (30, 499_999), (500_001, 1_000_029)]
    assert h.take(25) is None and h.take(10) is None  # not a hole (any more)
    assert h.ids == 8 + 999_999


def test_a_read_settles_only_the_ids_it_covered() -> None:
    """A full page (LIMIT) covers ids only up to its last row; ranges past the query's range
    budget are not covered at all."""
    h = holes((1, 3000), (5000, 5000), (6000, 6000))
    queried = h.lowest(2)  # (6000, 6000) is not in this read
    assert h.settle(queried, 1000, xmin=50, xmax=50, now=OLD) == 1000  # full page ending at 1000
    assert h.spans() == [(1001, 3000), (5000, 5000), (6000, 6000)]
    assert h.settle(h.lowest(2), None, xmin=50, xmax=50, now=OLD) == 2001  # a page that was not full
    assert h.spans() == [(6000, 6000)] and h.ids == 1


def test_a_hole_is_settled_only_once_xmin_passes_the_xmax_armed_at_its_minimum_age() -> None:
    h = holes((7, 9))
    assert h.settle(h.lowest(9), None, xmin=300, xmax=300, now=MIN_AGE_S / 2) == 0  # too young to arm
    assert h.settle(h.lowest(9), None, xmin=150, xmax=160, now=OLD) == 0  # armed: 160
    assert h.settle(h.lowest(9), None, xmin=159, xmax=170, now=OLD) == 0  # transaction 159 still open
    assert h.settle(h.lowest(9), None, xmin=160, xmax=170, now=OLD) == 3
    assert not h and h.ids == 0


def test_pieces_of_a_split_range_keep_its_age_and_armed_xmax() -> None:
    h = holes((1, 10))
    assert h.settle(h.lowest(9), None, xmin=90, xmax=100, now=OLD) == 0  # armed: 100
    h.take(5)
    assert h.settle(h.lowest(9), None, xmin=100, xmax=120, now=OLD) == 9
    assert not h


def test_without_snapshot_information_a_covered_hole_of_minimum_age_is_settled() -> None:
    """SQLite (xmax 0): one writer at a time, so no open transaction holds an id below a committed one."""
    h = holes((3, 4))
    assert h.settle(h.lowest(9), None, xmin=0, xmax=0, now=MIN_AGE_S / 2) == 0
    assert h.settle(h.lowest(9), 3, xmin=0, xmax=0, now=OLD) == 1
    assert h.spans() == [(4, 4)]
