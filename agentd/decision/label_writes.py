"""Labels replicated through the fleet state (issues 14 and 16; DESIGN sections 3 and 5).

Every label a node records (an operator's, an approval's, a rejection's) is also a write of
the node's own fleet-state key ``nodes/<node id>/labels/<decision id>``, merged and its
signed gossip queued in the label's own transaction, so every peer holds the fleet's labels
and can check who wrote them like any other key. The value is the label (skill, action,
source, who, the event id) and, when they fit the value bound, the decision's inputs: a peer
whose text stages read the same skill learns from the example as from its own labels. A key
lives ``LABEL_TTL_S`` (the longest lifetime a key may have); at most ``MAX_LABEL_KEYS`` label
keys are held, so labels can never crowd the operators' site keys out of the map.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from agentd.config.fleet_state import MAX_TTL_S, value_problem
from agentd.decision.approval_writes import ResolutionWrites
from agentd.ids import new_id
from agentd.state.fleet_state import StateWrite
from agentd.state.lww import Entry, expiry

if TYPE_CHECKING:
    from agentd.state.labels import LabelWrite

LABEL_TTL_S = MAX_TTL_S
LABEL_KEY = re.compile(r"nodes/([a-z0-9][a-z0-9_.-]{0,63})/labels/([0-9a-f]{32})")


def label_key(node: str, decision_id: str) -> str:
    return f"nodes/{node}/labels/{decision_id}"


def label_value(label: LabelWrite, inputs: dict[str, Any]) -> dict[str, Any]:
    """What a label's key holds: the label, with the decision's inputs if the whole still fits the value bound."""
    value: dict[str, Any] = {"skill": label.skill, "action": label.action, "source": label.source, "by": label.by,
                             "event_id": label.event_id[:64]}
    with_inputs = {**value, "inputs": inputs}
    return with_inputs if inputs and value_problem(with_inputs) is None else value


def label_writes(node: str, label: LabelWrite, inputs: dict[str, Any], *, hlc: str, outbound: Any) -> ResolutionWrites:
    """The write of ``label``'s key at ``hlc``, signed and gossiped when ``outbound`` can (MQTT on)."""
    e = Entry(key=label_key(node, label.decision_id), hlc=hlc, writer=node, wid=new_id(), value=label_value(label, inputs),
              deleted=False, expires_at=expiry(hlc, LABEL_TTL_S))
    messages = getattr(outbound, "state_messages", None)
    signed = messages([(e, LABEL_TTL_S)]) if messages is not None else [(b"", None)]
    return ResolutionWrites([StateWrite(e, origin) for origin, _ in signed], [row for _, row in signed if row is not None])


def joined(first: ResolutionWrites | None, second: ResolutionWrites) -> ResolutionWrites:
    """Both sets of writes, made in one transaction."""
    if first is None:
        return second
    return ResolutionWrites(first.writes + second.writes, first.rows + second.rows)


def replicated_label(entry: Entry) -> tuple[str, str, dict[str, Any]] | None:
    """``(node, decision id, value)`` if ``entry`` is a label key holding a label, else None."""
    m = LABEL_KEY.fullmatch(entry.key)
    if m is None or entry.deleted or not isinstance(entry.value, dict):
        return None
    v = entry.value
    if not isinstance(v.get("skill"), str) or not isinstance(v.get("action"), str):
        return None
    return m.group(1), m.group(2), v
