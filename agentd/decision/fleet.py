"""The in-memory read model of fleet decisions and the fleet-state map that rules read.

The map holds each key's winning write (``agentd.state.lww``); what the store merged is
applied here after its commit, so rules never touch the database.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any

from agentd.state.lww import Entry, merge

FLEET_WINDOW_S = 24 * 3600.0


FLEET_MAX_PER_ACTION = 100_000
FLEET_MAX_ACTIONS = 1_000
MAX_LISTED_KEYS = 1_000  # fleet_keys() lists at most this many


class FleetView:
    """An in-memory read model of recent fleet decisions and the fleet-state map.

    Filled from SQLite at start-up and by every decision (this node's, and peers' once the
    mesh gossips them); rules read it without touching the database.
    """

    def __init__(self) -> None:
        self._times: dict[str, deque[float]] = defaultdict(deque)
        self._state: dict[str, Entry] = {}
        self._functions: dict[str, Callable[..., Any]] = {
            "fleet_count": lambda action, window_s: self.count(str(action), float(window_s)),
            "fleet_value": lambda key: self.value(str(key)),
            "fleet_keys": lambda prefix: self.keys(str(prefix)),
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

    def apply(self, entry: Entry) -> None:
        """Merge one write (last writer wins; a newer one already held stays)."""
        won = merge(self._state.get(entry.key), entry)
        assert won is not None
        self._state[entry.key] = won

    def load(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            self.apply(e)

    def set_value(self, key: str, value: Any) -> None:
        """A value as if written locally, for tests and tools (it wins over nothing but older local values)."""
        self._state[key] = Entry(key=key, hlc="0000000000000-0000", writer="", wid="", value=value)

    def value(self, key: str, now: float | None = None) -> Any:
        """The key's live value (not unset, not expired), or None."""
        e = self._state.get(key)
        return e.value if e is not None and e.live(time.time() if now is None else now) else None

    def keys(self, prefix: str, now: float | None = None) -> list[str]:
        """The live keys that start with ``prefix``, sorted (at most ``MAX_LISTED_KEYS``)."""
        now = time.time() if now is None else now
        return sorted(k for k, e in self._state.items() if k.startswith(prefix) and e.live(now))[:MAX_LISTED_KEYS]

    def functions(self) -> dict[str, Callable[..., Any]]:
        return self._functions
