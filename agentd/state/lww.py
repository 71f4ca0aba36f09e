"""The fleet-state register: last writer wins per key, as plain functions over plain data.

Each key holds one ``Entry``: a value, or a tombstone (``deleted``) left by an unset, with
the write's HLC, its writer (a node id, or ``operator:<name>``) and the id of the signed
write it came from. Of two entries for a key the one with the greater ``order`` wins: the
HLC first, then the writer (the node id breaks ties, DESIGN section 6), then the write's id
and its content, so that the order is total and ``merge`` is commutative, associative and
idempotent whatever arrives in whatever order. Expiry does not take part in the merge: an
expired entry still wins over older writes; it only reads as absent (``live``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentd.trust import hlc as hlc_


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's register: the winning write."""

    key: str
    hlc: str
    writer: str
    wid: str  # the signed write's id (a command id, or a node's state_write id)
    value: Any = None  # JSON; None for a tombstone
    deleted: bool = False
    expires_at: float | None = None  # epoch seconds: the write's HLC wall time plus its lifetime

    @property
    def order(self) -> tuple[str, str, str, str]:
        """What decides between two writes of a key (greater wins)."""
        content = json.dumps([self.deleted, self.expires_at, self.value], sort_keys=True, separators=(",", ":"))
        return (self.hlc, self.writer, self.wid, content)

    def live(self, now: float) -> bool:
        """Whether rules see the value now (not unset, not expired)."""
        return not self.deleted and (self.expires_at is None or now < self.expires_at)

    def as_json(self, now: float) -> dict[str, Any]:
        """What `agentd fleet-state --json` shows of it."""
        return {"value": self.value, "writer": self.writer, "hlc": self.hlc, "expires_at": self.expires_at,
                "deleted": self.deleted, "live": self.live(now)}


def expiry(write_hlc: str, lifetime_s: float | None) -> float | None:
    """When a write made at ``write_hlc`` with ``lifetime_s`` expires (None: never)."""
    return None if lifetime_s is None else round(hlc_.decode(write_hlc)[0] / 1000 + float(lifetime_s), 3)


def merge(a: Entry | None, b: Entry | None) -> Entry | None:
    """The winner of two entries of one key (either may be None: nothing known)."""
    if a is None:
        return b
    if b is None or a.order >= b.order:
        return a
    return b


def merge_maps(a: Mapping[str, Entry], b: Mapping[str, Entry]) -> dict[str, Entry]:
    """Two replicas' maps merged key by key."""
    out = dict(a)
    for key, entry in b.items():
        won = merge(out.get(key), entry)
        assert won is not None
        out[key] = won
    return out


def apply_all(state: Mapping[str, Entry], entries: Iterable[Entry]) -> dict[str, Entry]:
    """``state`` after receiving ``entries`` in this order."""
    out = dict(state)
    for e in entries:
        won = merge(out.get(e.key), e)
        assert won is not None
        out[e.key] = won
    return out
