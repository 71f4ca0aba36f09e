"""The in-memory read model of fleet decisions and the fleet-state map that rules read."""

from __future__ import annotations

import bisect
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


FLEET_WINDOW_S = 24 * 3600.0


FLEET_MAX_PER_ACTION = 100_000
FLEET_MAX_ACTIONS = 1_000


class FleetView:
    """An in-memory read model of recent fleet decisions and the fleet-state map.

    Filled from SQLite at start-up and by every decision (this node's, and peers' once the
    mesh gossips them); rules read it without touching the database.
    """

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = defaultdict(deque)
        self._values: dict[str, Any] = {}
        self._functions: dict[str, Callable[..., Any]] = {
            "fleet_count": lambda action, window_s: self.count(str(action), float(window_s)),
            "fleet_value": self.value,
        }

    def add_decision(self, action: str, ts: float) -> None:
        if action not in self._times and len(self._times) >= FLEET_MAX_ACTIONS:
            return  # a peer inventing action names cannot grow this without bound
        times = self._times[action]
        if times and ts < times[-1]:
            bisect.insort(times, ts)
        else:
            times.append(ts)
        cutoff = time.time() - FLEET_WINDOW_S
        while times and (times[0] < cutoff or len(times) > FLEET_MAX_PER_ACTION):
            times.popleft()

    def count(self, action: str, window_s: float, now: float | None = None) -> int:
        times = self._times.get(action)
        if not times:
            return 0
        now = now if now is not None else time.time()
        # A decision dated ahead of now (a peer's clock, or a forgery within the skew bound) counts only from its time on.
        return bisect.bisect_right(times, now) - bisect.bisect_left(times, now - float(window_s))

    def set_value(self, key: str, value: Any) -> None:
        self._values[key] = value

    def value(self, key: str) -> Any:
        return self._values.get(key)

    def functions(self) -> dict[str, Callable[..., Any]]:
        return self._functions
