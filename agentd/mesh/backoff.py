"""Reconnect back-off: capped exponential with full jitter (a pure function)."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, *, base_s: float = 0.5, cap_s: float = 30.0, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): uniform in [0, min(cap, base * 2**attempt)].

    Full jitter spreads a fleet's reconnects after a broker restart instead of
    synchronising them.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = min(cap_s, base_s * (2 ** min(attempt, 32)))
    return (rng or random).uniform(0.0, ceiling)
