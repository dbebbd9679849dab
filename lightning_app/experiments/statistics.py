"""The seeds' intervals: the mean with the 95% t-interval's half-width over n ≥ 3 seeds, [min–max] for
n = 2, and whether two intervals separate.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats


@dataclass
class Interval:
    """Mean of n values and a 95% interval: Student's t for n ≥ 3, the min–max range below that."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def kind(self) -> str:
        return "t95" if self.n >= 3 else ("range" if self.n == 2 else "single")

    def separated_from(self, other: "Interval") -> bool:
        """True when the two intervals do not overlap (an ordering a table may claim)."""
        return self.high < other.low or other.high < self.low

    def format(self, digits: int = 3) -> str:
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        if self.kind == "t95":
            return f"{self.mean:.{digits}f} ± {(self.high - self.mean):.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}–{self.high:.{digits}f}]"


def interval(values: list[float]) -> Interval | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    n = len(values)
    mean = statistics.fmean(values)
    if n < 3:
        return Interval(mean, min(values), max(values), n)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)
