"""Peers witness each other's audit heads (issue 15, item 3): ``head`` messages on ``gossip/<node>``.

A node publishes its newest signed checkpoint with the ``SEND_CHAIN`` chained ones before it
(a receiver takes up to ``trust.witness.MAX_CHAIN``) (``{"head": <checkpoint>, "chain": [<checkpoint>, ...]}``, QoS 1) on connect,
whenever the writer signs a new one and once per digest round (counted as ``heads_published``).
A peer checks the head is the node's own, signed by the key configured for it (``trust.peers``,
or learned), and hands it to the store, which judges it against the head witnessed before
(``agentd.trust.witness``) and keeps it. A node found rolled back or forked is logged, counted
(``heads_flagged``; the metric ``agentd_peers_audit_flagged``) and audited on the peer
(``peer_audit_flagged``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from agentd.errors import Rejected, TrustError
from agentd.mesh.topics import topic
from agentd.mesh.transport import publish_in_loop
from agentd.state.audit_check import head_with_chain
from agentd.trust.checkpoints import Checkpoint
from agentd.trust.envelope import envelope
from agentd.trust.witness import head_problem

if TYPE_CHECKING:
    from collections.abc import Callable

    from agentd.config.schema import Config
    from agentd.mesh.refusals import RefusalTally
    from agentd.state.store import Store
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import NodeKey

log = logging.getLogger(__name__)
HEAD = "head"
SEND_CHAIN = 4  # about 2.4 KiB a message; a peer online sees every checkpoint, and QoS 1 queues them for one offline
POLL_S = 0.5  # how often the publisher looks for a newly signed checkpoint (an attribute read, no query)


class Heads:
    """Publishes this node's signed audit head and witnesses the peers'."""

    def __init__(
        self, *, cfg: Config, store: Callable[[], Store], key: NodeKey, clock: Clock, counters: dict[str, int],
        refusals: RefusalTally, key_of: Callable[[str], str | None],
    ) -> None:
        self.fleet, self.node = cfg.node.fleet, cfg.node.id
        self._interval = cfg.mqtt.digest_interval_s
        self._store, self._key, self._clock = store, key, clock
        self._counters, self._refusals, self._key_of = counters, refusals, key_of

    async def publish(self, client: Any) -> None:
        """On connect, at every newly signed checkpoint and every digest round: publish the head."""
        sent: tuple[int, str] | None = None
        sent_at = -1e18
        while True:
            cp = self._store().signed_head
            now = time.monotonic()
            if cp is not None and ((cp.seq, cp.sig) != sent or now - sent_at >= self._interval):
                found = await self._store().read(functools.partial(head_with_chain, limit=SEND_CHAIN))
                if found is not None:
                    head, chain = found
                    payload = envelope(HEAD, fleet=self.fleet, node=self.node, hlc=self._clock.now(),
                                       body={"head": head, "chain": chain}, key=self._key)
                    await publish_in_loop(client, topic(self.fleet, "gossip", self.node), payload, qos=1)
                    self._counters["heads_published"] = self._counters.get("heads_published", 0) + 1
                    sent, sent_at = (int(head["seq"]), str(head["sig"])), now
            await asyncio.sleep(POLL_S)

    async def witness(self, node: str, body: dict[str, Any]) -> None:
        """A peer's ``head`` message (envelope verified, body shape checked by peerwire): judge and keep it."""
        key = self._key_of(node)
        try:
            head = Checkpoint.from_dict(body["head"])
            chain = [Checkpoint.from_dict(c) for c in body["chain"]]
        except TrustError as exc:
            self._refusals.refused("peer", node, Rejected("malformed", f"head: {exc}"))
            return
        problem = "no key configured for it" if key is None else head_problem(head, node=node, key=key)
        if problem is not None or key is None:
            self._refusals.refused("peer", node, Rejected("bad_head", f"audit head of {node[:64]!r}: {problem}"))
            return
        verdict, changed = await self._store().witness_head(node, head, chain, key=key)
        if verdict.flagged:
            self._counters["heads_flagged"] = self._counters.get("heads_flagged", 0) + 1
            if changed:
                log.error("peer %s: audit trail %s: %s (audited as peer_audit_flagged)", node[:64],
                          verdict.outcome.replace("_", " "), verdict.detail)
        elif verdict.outcome == "gap" and changed:
            log.warning("peer %s: %s", node[:64], verdict.detail)
