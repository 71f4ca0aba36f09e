"""Counting refused input without letting a flood cost more than a few records.

Every handler of untrusted bytes files what it refuses here under ``<path>.<reason>``
(``event.not_json``, ``command.unsigned``, ``peer.bad_signature``, ...). The counts are
what ``agentd status`` and the metrics show; ``take()`` hands the daemon one summary per
path and reason for the interval just ended, which it audits as one record each. A junk
flood of any size therefore costs at most one audit record per reason per interval, no
reply and no log line beyond one per reason per minute.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentd.errors import InputError

log = logging.getLogger(__name__)
MAX_SENDERS = 5  # senders named per summary (the most frequent)
LOG_EVERY_S = 60.0


@dataclass
class _Window:
    count: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    example: str = ""
    senders: Counter[str] = field(default_factory=Counter)


class RefusalTally:
    """Counts refusals by ``path.reason``, and summarises them per interval."""

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self._window: dict[str, _Window] = {}
        self._logged: dict[str, float] = {}

    def add(
        self, path: str, reason: str, *, sender: str = "", detail: str = "", now: float | None = None, summarise: bool = True
    ) -> bool:
        """Count one refusal; True when it is the first of its kind this minute (log it then).

        ``summarise=False`` only counts it: for refusals audited one by one (a command a known
        operator signed) and for duplicates, which at-least-once delivery makes normal.
        """
        key = f"{path}.{reason}"
        now = time.time() if now is None else now
        self.total[key] += 1
        if not summarise:
            return False
        w = self._window.get(key)
        if w is None:
            w = self._window[key] = _Window(first_at=now, example=detail[:200])
        w.count += 1
        w.last_at = now
        name = sender[:64]
        if name and (name in w.senders or len(w.senders) < 1000):  # bounded even under a flood of names
            w.senders[name] += 1
        if now - self._logged.get(key, -1e18) >= LOG_EVERY_S:
            self._logged[key] = now
            return True
        return False

    def refused(self, path: str, sender: str, exc: InputError) -> None:
        """Count a refused message by path and reason; log the first of each kind a minute."""
        if self.add(path, exc.reason, sender=sender, detail=str(exc)):
            log.warning("refused a %s message from %s: %s: %s (further ones this minute are only counted)",
                        path, sender[:120], exc.reason, exc)

    def take(self) -> list[dict[str, Any]]:
        """One summary per ``path.reason`` refused since the last call, and start a new interval."""
        out = []
        for key, w in sorted(self._window.items()):
            path, _, reason = key.partition(".")
            out.append({
                "path": path, "reason": reason, "count": w.count,
                "first_at": round(w.first_at, 3), "last_at": round(w.last_at, 3), "example": w.example,
                "senders": dict(w.senders.most_common(MAX_SENDERS)),
            })
        self._window.clear()
        return out
