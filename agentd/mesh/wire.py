"""Decision records into MQTT messages: the signed envelopes and topics a decision is sent on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentd.mesh.topics import topic
from agentd.trust.envelope import envelope_raw

if TYPE_CHECKING:
    from agentd.config.schema import Config
    from agentd.trust.keys import NodeKey


class DecisionWire:
    """A decision's outbox rows: its envelope on ``nodes/<node>/decisions``, and on ``.../approvals`` while it waits for one."""

    def __init__(self, *, fleet: str, node: str, key: NodeKey) -> None:
        self._fleet, self._node, self._key = fleet, node, key
        self._decisions = topic(fleet, "nodes", node, "decisions")
        self._approvals = topic(fleet, "nodes", node, "approvals")

    def decision_messages(self, record: dict[str, Any], record_bytes: bytes) -> list[tuple[str, bytes, int, bool]]:
        """``record_bytes`` is the record's canonical JSON (the engine has it already for the audit chain)."""
        payload = envelope_raw("decision", fleet=self._fleet, node=self._node, hlc=record["hlc"], body_canonical=record_bytes,
                               key=self._key, ident=record["id"])
        rows = [(self._decisions, payload, 1, False)]
        if record.get("approval") is not None:
            rows.append((self._approvals, payload, 1, False))
        return rows


def decision_wire(cfg: Config, key: NodeKey) -> DecisionWire | None:
    """The node's DecisionWire, or None when MQTT is off (a decision then sends nothing)."""
    return DecisionWire(fleet=cfg.node.fleet, node=cfg.node.id, key=key) if cfg.mqtt.enabled else None
