"""Pure statistics for the throughput bench: a run summary, the medic/plain ratio, a percentile.

Kept apart from the scenarios so the numbers in the JSON are computed in one place, and can be
read (and checked) without any of the machinery that produced the samples.
"""

from __future__ import annotations

import statistics
from typing import Any


def summary(values: list[float], *, higher_is_better: bool = True, digits: int = 1) -> dict[str, Any]:
    """Median, best and every run of one measurement, rounded to `digits`."""
    if not values:
        return {"median": None, "best": None, "runs": []}
    best = max(values) if higher_is_better else min(values)
    return {
        "median": round(statistics.median(values), digits),
        "best": round(best, digits),
        "runs": [round(v, digits) for v in values],
    }


def ratio(medic: dict[str, Any], plain: dict[str, Any], target: float) -> dict[str, Any]:
    """medic / plain of two summaries (median and best), and whether the median meets `target`."""

    def r(key: str) -> float | None:
        if not medic.get(key) or not plain.get(key):
            return None
        return float(round(medic[key] / plain[key], 3))

    out: dict[str, Any] = {"median": r("median"), "best": r("best"), "target": target}
    out["meets_target_on_median"] = out["median"] is not None and out["median"] >= target
    return out


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The `q` quantile (0..1) of already sorted values, nearest rank; None when there are none."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]
