"""Inbound MQTT messages: the topics a node subscribes to, what each topic it receives is, the event payload."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from agentd.errors import Rejected
from agentd.mesh.topics import topic
from agentd.trust.untrusted import parse_json

if TYPE_CHECKING:
    from agentd.config.schema import Config


def parse_event(payload: bytes, *, max_bytes: int) -> tuple[str | None, Any]:
    """An event message: ``{"id": optional str, "ts": optional number, "data": {...}}``; InputError
    (``Rejected`` with a reason code) otherwise. The bytes are parsed with every bound of
    ``agentd.untrusted``."""
    msg = parse_json(payload, max_bytes=max_bytes, what="event payload")
    if not isinstance(msg, dict):
        raise Rejected("malformed", "event payload must be a JSON object with a \"data\" object")
    unknown = set(msg) - {"id", "ts", "data"}
    if unknown:
        raise Rejected("malformed", f"unknown event key(s) {sorted(k[:40] for k in unknown)[:5]} (known: id, ts, data)")
    eid = msg.get("id")
    if eid is not None and not isinstance(eid, str):
        raise Rejected("malformed", '"id" must be a string')
    ts = msg.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float)):
        raise Rejected("malformed", '"ts" must be a number (epoch seconds)')
    return eid, msg.get("data")


def subscriptions(cfg: Config, *, commands: bool = True) -> list[str]:
    """The topic filters a node subscribes to: its events, its peers' decisions, gossip and status, its commands.

    MQTT 3.1.1 has no "no local": a wildcard would bring every own decision back to us, so
    peers are subscribed one by one unless unknown peers may be learned.
    """
    fleet, node = cfg.node.fleet, cfg.node.id
    topics = [topic(fleet, "nodes", node, "events", "+")]
    if cfg.trust.allow_unknown_peers:
        topics += [topic(fleet, "nodes", "+", "decisions"), topic(fleet, "gossip", "+")]
    else:
        for peer in sorted(cfg.trust.peers):
            topics += [topic(fleet, "nodes", peer, "decisions"), topic(fleet, "gossip", peer)]
    topics.append(topic(fleet, "nodes", "+", "status"))
    if commands:
        topics += [topic(fleet, "cmd", node), topic(fleet, "cmd", "all")]
    return topics


class Route(NamedTuple):
    """What an inbound topic is: an ``event`` for skill ``name``, a ``command``, or a ``peer`` message of ``kind`` from node ``name``."""

    path: Literal["event", "command", "peer"]
    name: str = ""
    kind: str = ""


class Router:
    """Classifies the topics one node receives (the filters of ``subscriptions``) by plain string tests."""

    def __init__(self, *, fleet: str, node: str) -> None:
        self._node = node
        self._events = topic(fleet, "nodes", node, "events") + "/"
        self._peers = topic(fleet, "nodes") + "/"
        self._gossip = topic(fleet, "gossip") + "/"
        self._commands = (topic(fleet, "cmd", node), topic(fleet, "cmd", "all"))

    def route(self, name: str) -> Route | None:
        """The route of topic ``name``; None for one that is not for this node (its own decisions, say)."""
        if name.startswith(self._events):
            return Route("event", name[len(self._events):])
        if name in self._commands:
            return Route("command")
        parts = name[len(self._peers):].split("/") if name.startswith(self._peers) else []
        if name.startswith(self._gossip) and name[len(self._gossip):] != self._node:
            parts = [name[len(self._gossip):], "gossip"]
        if len(parts) == 2 and parts[0] != self._node and parts[1] in ("decisions", "status", "gossip"):
            return Route("peer", parts[0], parts[1])
        return None
