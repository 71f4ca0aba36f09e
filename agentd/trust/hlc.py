"""Hybrid logical clock (Kulkarni et al. 2014), as plain functions over plain data.

A timestamp is ``(wall_ms, counter)``; its string form ``"<wall_ms:013d>-<counter:04d>"``
sorts the same as the tuple. Ties between nodes are broken by node id by the caller.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

Hlc = tuple[int, int]


def encode(ts: Hlc) -> str:
    return f"{ts[0]:013d}-{ts[1]:04d}"


_HLC_RE = re.compile(r"[0-9]{13}-[0-9]{4}")


def decode(text: str) -> Hlc:
    """Parse an encoded HLC; ValueError if malformed."""
    if not _HLC_RE.fullmatch(text):  # ASCII digits only: the string must sort like the tuple
        raise ValueError(f"malformed HLC {text[:40]!r}")
    return int(text[:13]), int(text[14:])


MAX_COUNTER = 9999


def _norm(ts: Hlc) -> Hlc:
    # Keep the counter within its 4 digits so the string form sorts like the tuple:
    # past 9999 (a clock stuck or jumped back under load) logical time moves 1 ms ahead.
    return (ts[0] + 1, 0) if ts[1] > MAX_COUNTER else ts


def tick(last: Hlc, now_ms: int) -> Hlc:
    """The HLC for a local event or send."""
    if now_ms > last[0]:
        return (now_ms, 0)
    return _norm((last[0], last[1] + 1))


def merge(last: Hlc, remote: Hlc, now_ms: int, max_advance_ms: int | None = None) -> Hlc:
    """The HLC after receiving a message stamped ``remote``.

    With ``max_advance_ms``, a remote stamp further ahead of ``now_ms`` than that counts as
    ``now_ms + max_advance_ms``: a peer (honest with a fast clock, or not) can move this
    clock ahead by at most that much.
    """
    if max_advance_ms is not None and remote[0] > now_ms + max_advance_ms:
        remote = (now_ms + max_advance_ms, 0)
    wall = max(last[0], remote[0], now_ms)
    if wall == last[0] == remote[0]:
        return _norm((wall, max(last[1], remote[1]) + 1))
    if wall == last[0]:
        return _norm((wall, last[1] + 1))
    if wall == remote[0]:
        return _norm((wall, remote[1] + 1))
    return (wall, 0)


class Clock:
    """A thread-safe HLC for one node."""

    def __init__(self, *, now_ms: Callable[[], int] | None = None, start: Hlc = (0, 0)) -> None:
        self._now = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._last = start
        self._lock = threading.Lock()

    def now(self) -> str:
        with self._lock:
            self._last = tick(self._last, self._now())
            return encode(self._last)

    def observe(self, remote: str, *, max_advance_ms: int | None = None) -> str:
        """Merge a received stamp (ValueError if malformed); see ``merge`` for ``max_advance_ms``."""
        with self._lock:
            self._last = merge(self._last, decode(remote), self._now(), max_advance_ms)
            return encode(self._last)
