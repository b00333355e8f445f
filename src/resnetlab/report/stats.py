"""Mean ± sample standard deviation over seeds: the one definition every report uses.

The std is the sample one (ddof = 1), the spread of the runs a reader could repeat, and it is NaN
for a single value: one seed has no spread, and printing 0 would claim one. Sums are exact
(`math.fsum`), so a number does not depend on the order of the seeds or on the library that
holds them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple


class MeanStd(NamedTuple):
    mean: float
    std: float  # sample std; NaN when n == 1
    n: int


def mean_std(values: Iterable[float]) -> MeanStd:
    """Mean and sample std of `values` (at least one)."""
    xs = [float(x) for x in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_std of no values is undefined")
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    return MeanStd(mean, std, n)
