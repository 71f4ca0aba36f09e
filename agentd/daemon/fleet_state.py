"""The node's side of the fleet-state map (issue 16): operators' writes in, peers' writes in.

An operator's ``fleet_set``/``fleet_unset`` command (checked like any fleet command first) is
itself the write: it is merged, and queued whole on ``gossip/<node>``, in one transaction.
A peer's ``state`` message carries a signed write (``origin``) that is checked here against
this node's own trust, whoever relayed it (``agentd.control.state_writes``); a write by
anyone but the key's owner is refused and counted (``state.not_owner``, ...). What wins is
applied to the engine's read model after its commit, so rules read it at once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from agentd.control.state_writes import check_origin
from agentd.errors import InputError, Rejected
from agentd.mesh.wire import decision_wire
from agentd.state import fleet_state
from agentd.state.decisions import OUTBOX_INSERT
from agentd.state.fleet_state import StateWrite
from agentd.state.store import Soft
from agentd.trust.canonical import canonical

if TYPE_CHECKING:
    import sqlite3

    from agentd.daemon.node import Daemon
    from agentd.state.lww import Entry

log = logging.getLogger(__name__)


class FleetState:
    """Writes of the fleet-state map arriving at one node (the fleet-command path and the gossip)."""

    def __init__(self, node: Daemon) -> None:
        self._node = node

    def node_key(self, name: str) -> str | None:
        """The public key this node trusts for node ``name``: its own, a peer's (configured or learned)."""
        node = self._node
        if name == node.loaded.config.node.id:
            return node.current_engine().key.public_b64
        if node.link is not None:
            return node.link.peer_key(name)
        return node.loaded.config.trust.peers.get(name)

    async def operator_write(self, env: dict[str, Any]) -> dict[str, Any]:
        """An operator's verified ``fleet_set``/``fleet_unset`` command: merge it and gossip it, together."""
        engine, cfg = self._node.current_engine(), self._node.loaded.config
        try:
            entry = check_origin(env, cfg=cfg, node_key=self.node_key)
        except Rejected as exc:
            raise InputError(f"{exc.reason}: {exc}") from None
        origin = canonical(env)
        wire = decision_wire(cfg, engine.key)
        row = wire.relay_row(origin, self._node.clock.now()) if wire is not None else None

        def op(conn: sqlite3.Connection) -> str:
            [outcome] = fleet_state.apply(conn, [StateWrite(entry, origin)])
            if outcome == "applied" and row is not None:
                conn.execute(OUTBOX_INSERT, (row[0], row[1], row[2], int(row[3]), time.time()))
            return outcome

        outcome = await engine.store.write(op)
        self._committed(entry, outcome)
        if outcome == "applied" and row is not None:
            engine.store.outbox.ready.set()
        return {"key": entry.key, "hlc": entry.hlc, "writer": entry.writer, "outcome": outcome,
                "expires_at": entry.expires_at, "deleted": entry.deleted}

    async def peer_write(self, sender: str, env: dict[str, Any]) -> None:
        """A peer's ``state`` message (its envelope verified by the gossip): check the write inside, merge it."""
        cfg = self._node.loaded.config
        try:
            entry = check_origin(env["body"].get("origin"), cfg=cfg, node_key=self.node_key)
        except Rejected as exc:
            self._node.refusals.refused("state", sender, exc)
            return
        origin = canonical(env["body"]["origin"])
        engine = self._node.current_engine()
        # Soft: a write lost to a power cut comes again with the next digest exchange.
        [outcome] = await engine.store.write(Soft(lambda conn: fleet_state.apply(conn, [StateWrite(entry, origin)])))
        self._committed(entry, outcome)
        if outcome == "full":
            self._node.refusals.refused("state", sender, Rejected("too_many_keys", f"{fleet_state.MAX_KEYS} fleet-state keys held"))

    def _committed(self, entry: Entry, outcome: str) -> None:
        if outcome == "applied":
            engine = self._node.current_engine()
            engine.fleet.apply(entry)
            engine.replicated_label_arrived(entry)  # a peer's label teaches the text stages here too
            log.debug("fleet state %s set by %s at %s", entry.key, entry.writer, entry.hlc)
