"""Decision records into MQTT messages: the signed envelopes and topics a decision is sent on.

Fleet-state writes (issue 16) go out on ``gossip/<node>`` as a ``state`` envelope whose body
is ``{"origin": <the signed write>}``: a node's own write is a ``state_write`` envelope
signed by it; an operator's is the operator's signed ``fleet_set``/``fleet_unset`` command.
The origin travels unchanged, so each receiver checks its signature and the writer's right
to the key itself, whoever relays it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentd.mesh.topics import topic
from agentd.trust.envelope import envelope, envelope_raw

if TYPE_CHECKING:
    from agentd.config.schema import Config
    from agentd.state.lww import Entry
    from agentd.trust.keys import NodeKey

STATE = "state"  # the peer message on gossip/<node>: {"origin": <a signed write>}
STATE_WRITE = "state_write"  # a node's write of its own key, signed by it
Row = tuple[str, bytes, int, bool]


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

    def state_messages(self, writes: list[tuple[Entry, float | None]]) -> list[tuple[bytes, Row]]:
        """Per write of this node's own key (entry, lifetime in seconds): its signed ``state_write``
        (canonical JSON, kept with the entry) and the outbox row that gossips it."""
        out = []
        for e, lifetime in writes:
            body: dict[str, Any] = {"key": e.key, "unset": True} if e.deleted else {"key": e.key, "value": e.value}
            if lifetime is not None and not e.deleted:
                body["expires_in_s"] = lifetime
            origin = envelope(STATE_WRITE, fleet=self._fleet, node=self._node, hlc=e.hlc, body=body, key=self._key, ident=e.wid)
            out.append((origin, self.relay_row(origin, e.hlc)))
        return out

    def relay_row(self, origin: bytes, at_hlc: str) -> Row:
        """The outbox row that sends a signed write (``origin``, canonical JSON) on ``gossip/<node>``."""
        payload = envelope_raw(STATE, fleet=self._fleet, node=self._node, hlc=at_hlc, body_canonical=b'{"origin":' + origin + b"}",
                               key=self._key)
        return (topic(self._fleet, "gossip", self._node), payload, 1, False)


def decision_wire(cfg: Config, key: NodeKey) -> DecisionWire | None:
    """The node's DecisionWire, or None when MQTT is off (a decision then sends nothing)."""
    return DecisionWire(fleet=cfg.node.fleet, node=cfg.node.id, key=key) if cfg.mqtt.enabled else None
