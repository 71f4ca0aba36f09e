"""The one percentile: what `agentd bench` and `agentd report` both mean by p50 and p99."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by the nearest-rank method: the smallest
    value with at least q % of the values at or below it. ValueError when empty."""
    if not values:
        raise ValueError("the percentile of no values")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]
