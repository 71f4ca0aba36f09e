"""A decision's writes of its node's own fleet-state keys (a part of ``Engine``; issue 16).

A skill's ``fleet_state:`` says which actions set (or unset) which key of the node's own
namespace ``nodes/<node id>/``, with what value and lifetime. The writes take the decision's
HLC (a lifetime counts from its wall time) and its action as committed (while an approval
waits: the interim action); they are merged into the fleet-state map, and their signed
gossip queued in the outbox, in the decision's own transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentd.ids import new_id
from agentd.state.fleet_state import StateWrite
from agentd.state.lww import Entry, expiry

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentd.config.schema import SkillConfig
    from agentd.decision.fleet import FleetView
    from agentd.state.store import DecisionWrite, Store


def own_writes(skill: SkillConfig, record: dict[str, Any], node: str) -> list[tuple[Entry, float | None]]:
    """The node's own keys the decision ``record`` writes, with each one's lifetime (None: until changed)."""
    out = []
    for w in skill.fleet_state:
        if w.action == record["action"]:
            e = Entry(key=f"nodes/{node}/{w.key}", hlc=record["hlc"], writer=node, wid=new_id(), value=None if w.unset else w.value,
                      deleted=w.unset, expires_at=None if w.unset else expiry(record["hlc"], w.ttl_s))
            out.append((e, None if w.unset else w.ttl_s))
    return out


class FleetStateMixin:
    """Commits a decision with the fleet-state writes its skill declares (the attributes are the engine's)."""

    store: Store
    fleet: FleetView
    node: str
    outbound: Any  # the engine's Outbound; with ``state_messages`` (agentd.mesh.wire.DecisionWire) writes are gossiped

    async def _record_decision(self, skill: SkillConfig, write: DecisionWrite) -> None:
        """``store.record_decision`` with the writes of ``skill.fleet_state``; DuplicateEvent as it raises."""
        writes = own_writes(skill, write.record, self.node)
        messages = getattr(self.outbound, "state_messages", None) if writes else None
        if messages is not None:
            write.outbox_later = _signed_later(write, writes, messages)
        elif writes:  # nothing gossips them (MQTT off)
            write.state_writes = [StateWrite(e, b"") for e, _ in writes]
        await self.store.record_decision(write)
        for e, _ in writes:
            self.fleet.apply(e)


def _signed_later(
    write: DecisionWrite, writes: list[tuple[Entry, float | None]], messages: Callable[[list[tuple[Entry, float | None]]], list[Any]]
) -> Callable[[], list[tuple[str, bytes, int, bool]]]:
    """The write's outbox rows, then the signed gossip of its state writes (with their origins
    set on ``write``), built on the store's writer thread like the decision's own envelope."""
    decision_rows = write.outbox_later

    def later() -> list[tuple[str, bytes, int, bool]]:
        rows = decision_rows() if decision_rows is not None else []
        signed = messages(writes)
        write.state_writes = [StateWrite(e, origin) for (e, _), (origin, _) in zip(writes, signed, strict=True)]
        return rows + [row for _, row in signed if row is not None]

    return later
