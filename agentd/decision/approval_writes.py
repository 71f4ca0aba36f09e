"""The fleet-state writes of an action that waited for a human (issue 16; DESIGN section 3).

A decision that needs approval commits its interim action, and with it only the interim
action's ``fleet_state:`` writes: the requested action has not happened. When the approval
resolves to another action (approved: the requested one; rejected or expired: ``on_reject``,
``on_timeout`` or the action a rejection names), that action's writes are made then, at a new
HLC (their lifetime counts from the resolution), merged and their signed gossip queued in the
resolution's own transaction. A resolution that keeps the interim action writes nothing new.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentd.decision.fleet_writes import own_writes
from agentd.state import fleet_state
from agentd.state.decisions import OUTBOX_INSERT
from agentd.state.fleet_state import StateWrite

if TYPE_CHECKING:
    import sqlite3

    from agentd.config.schema import SkillConfig
    from agentd.state.lww import Entry


@dataclass
class ResolutionWrites:
    """The writes one resolution makes: ``in_transaction`` runs inside it; ``entries`` then go to the read model."""

    writes: list[StateWrite]
    rows: list[tuple[str, bytes, int, bool]]
    applied: list[Entry] = field(default_factory=list)

    def in_transaction(self, conn: sqlite3.Connection, record: dict[str, Any]) -> None:
        """Merge the writes; queue the gossip of those that won (``state.decisions.resolve_approval``'s hook)."""
        del record
        outcomes = fleet_state.apply(conn, self.writes)
        self.applied = [w.entry for w, o in zip(self.writes, outcomes, strict=True) if o == "applied"]
        for (topic, payload, qos, retain), outcome in zip(self.rows, outcomes, strict=False):
            if outcome == "applied":
                conn.execute(OUTBOX_INSERT, (topic, payload, qos, int(retain), time.time()))


def resolution_writes(
    skill: SkillConfig | None, *, interim: str, applied: str, node: str, hlc: str, outbound: Any
) -> ResolutionWrites | None:
    """What resolving a decision of ``skill`` from ``interim`` to ``applied`` writes (None: nothing).

    ``outbound`` is the engine's (with ``state_messages`` the writes are signed and gossiped; without,
    MQTT is off and they stay local)."""
    if skill is None or applied == interim:
        return None
    writes = own_writes(skill, {"action": applied, "hlc": hlc}, node)
    if not writes:
        return None
    messages = getattr(outbound, "state_messages", None)
    signed = messages(writes) if messages is not None else [(b"", None)] * len(writes)
    return ResolutionWrites([StateWrite(e, origin) for (e, _), (origin, _) in zip(writes, signed, strict=True)],
                            [row for _, row in signed if row is not None])
