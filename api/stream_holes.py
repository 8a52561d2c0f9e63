"""The stream tail's holes as id ranges: ids below its high-water mark it has not seen yet.

A hole is an id taken by a transaction that has not committed (it may still) or that rolled back
(it never will). One range per gap, not one entry per id, so a 1,000,000-id gap costs what a
1-id gap does. Pure bookkeeping, no I/O: `api/stream_hub.py` queries the ranges `lowest()` names
and reports each fetch back here.

The settling rule (a hole is given up as rolled back): a fetch whose query covered the hole, under
one snapshot, did not return it, and that snapshot's xmin has reached the xmax armed on the hole.
The xmax is armed from the first snapshot taken `MIN_AGE_S` or more after the hole was seen:
`nextval` runs a moment before the inserting transaction takes its xid, so a snapshot taken at
once could predate that xid. xmin >= armed xmax means every transaction that could hold the id has
ended, and the covering read, seeing them ended, did not find the row: it rolled back. Ids that no
fetch covered (past the query's range budget, or past the last row of a full page) are never
settled. On SQLite (xmax 0: one writer at a time, so nothing is open below a committed id) a
covered hole is settled once it has its minimum age.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

MIN_AGE_S = 0.25  # nextval may come a moment before the inserting transaction takes its xid


@dataclass(slots=True)
class Gap:
    """Ids lo..hi (inclusive), seen missing at `seen_at`; `xmax` armed once (None: not yet);
    `origin` names the range a resync passed it as (what its pieces' late events are told by)."""

    lo: int
    hi: int
    seen_at: float
    xmax: int | None = None
    origin: int = 0

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1


class Holes:
    """Disjoint gaps in id order; `ids` is how many ids they hold in all."""

    def __init__(self) -> None:
        self._gaps: list[Gap] = []
        self._los: list[int] = []  # each gap's lo, for bisect
        self.ids = 0

    def __len__(self) -> int:
        return len(self._gaps)

    def __bool__(self) -> bool:
        return bool(self._gaps)

    def spans(self) -> list[tuple[int, int]]:
        return [(g.lo, g.hi) for g in self._gaps]

    def add(self, gap: Gap) -> None:
        """Add a gap above every gap held (new gaps come from the top of the tail)."""
        if self._gaps and gap.lo <= self._gaps[-1].hi:
            raise ValueError(f"gap {gap.lo}..{gap.hi} overlaps or is below {self._gaps[-1].lo}..{self._gaps[-1].hi}")
        self._gaps.append(gap)
        self._los.append(gap.lo)
        self.ids += gap.size

    def first(self) -> Gap | None:
        return self._gaps[0] if self._gaps else None

    def pop_first(self) -> Gap:
        self._los.pop(0)
        gap = self._gaps.pop(0)
        self.ids -= gap.size
        return gap

    def lowest(self, n: int) -> list[tuple[int, int]]:
        """The lowest `n` gaps, what the next fetch queries."""
        return [(g.lo, g.hi) for g in self._gaps[:n]]

    def take(self, id_: int) -> Gap | None:
        """Remove `id_` (its event arrived); return the gap it was in (None: not a hole). Splits
        its gap in two."""
        i = bisect.bisect_right(self._los, id_) - 1
        if i < 0 or id_ > self._gaps[i].hi:
            return None
        gap = self._gaps[i]
        self.ids -= 1
        if gap.lo == gap.hi:
            del self._gaps[i], self._los[i]
        elif id_ == gap.lo:
            gap.lo = self._los[i] = id_ + 1
        elif id_ == gap.hi:
            gap.hi = id_ - 1
        else:
            upper = Gap(id_ + 1, gap.hi, gap.seen_at, gap.xmax, gap.origin)
            gap.hi = id_ - 1
            self._gaps.insert(i + 1, upper)
            self._los.insert(i + 1, upper.lo)
        return gap

    def settle(self, queried: list[tuple[int, int]], covered_upto: int | None, xmin: int, xmax: int, now: float) -> int:
        """Report one fetch back: it queried `queried` (after `take`s of what it returned), read
        everything up to `covered_upto` (None: its page was not full, all of it) under a snapshot
        with `xmin`/`xmax`. Arm the covered gaps old enough; give up those whose transactions
        have all ended. Returns how many ids were given up."""
        given_up = 0
        for lo, hi in queried:
            top = hi if covered_upto is None else min(hi, covered_upto)
            if top < lo:
                break  # the spans are in id order: the rest lie past the page's last row
            given_up += self._settle_span(lo, top, xmin, xmax, now)
        return given_up

    def _settle_span(self, lo: int, hi: int, xmin: int, xmax: int, now: float) -> int:
        """Settle what is left of the gaps inside lo..hi (gaps may have split since the query)."""
        given_up = 0
        i = max(0, bisect.bisect_right(self._los, lo) - 1)
        while i < len(self._gaps) and self._gaps[i].lo <= hi:
            gap = self._gaps[i]
            if gap.hi < lo or now - gap.seen_at < MIN_AGE_S:
                i += 1
                continue
            if gap.xmax is None:
                gap.xmax = xmax
            if gap.xmax > 0 and xmin < gap.xmax:
                i += 1  # a transaction that may hold these ids is still running
                continue
            if gap.hi <= hi:  # wholly covered (gaps only shrink, so gap.lo >= lo here)
                given_up += gap.size
                del self._gaps[i], self._los[i]
            else:  # covered up to hi only: the rest waits for a fetch that reaches it
                given_up += hi - gap.lo + 1
                gap.lo = self._los[i] = hi + 1
                i += 1
        self.ids -= given_up
        return given_up
