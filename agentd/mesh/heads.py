"""Peers witness each other's audit heads (issue 15, item 3): ``head`` messages on ``gossip/<node>``.

A node publishes its newest signed checkpoint with the ``SEND_CHAIN`` chained ones before it
(a receiver takes up to ``trust.witness.MAX_CHAIN``) (``{"head": <checkpoint>, "chain": [<checkpoint>, ...]}``, QoS 1) on connect,
whenever the writer signs a new one and once per digest round (counted as ``heads_published``).
A peer checks the head is the node's own, signed by the key configured for it (``trust.peers``,
or learned), and hands it to the store, which judges it against the head witnessed before
(``agentd.trust.witness``) and keeps it. A node found rolled back or forked is logged, counted
(``heads_flagged``; the metric ``agentd_peers_audit_flagged``) and audited on the peer
(``peer_audit_flagged``). A head whose link to the witnessed one was not sent is judged only
after the checkpoints between are fetched from the node (``mesh.checkpoint_fetch``); the fleet's
question "which heads of mine did you witness" is answered by ``mesh.witness_answers``. What
these send goes out through one queue, drained by the session's ``publish`` task.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from agentd.errors import Rejected, TrustError
from agentd.mesh.checkpoint_fetch import ANSWER, REQUEST, CheckpointFetch
from agentd.mesh.topics import topic
from agentd.mesh.transport import publish_in_loop
from agentd.mesh.witness_answers import ANSWERS_PER_S, Rate, answer_witness_request
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
    from agentd.trust.witness import Verdict

log = logging.getLogger(__name__)
HEAD = "head"
KINDS = (HEAD, REQUEST, ANSWER, "witness_request")  # the gossip kinds handed to Heads.message
MAX_QUEUED = 256  # fetch requests and answers waiting for the session; past this they are dropped and counted
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
        self._out: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(MAX_QUEUED)
        self._witness_rate = Rate(ANSWERS_PER_S)
        self.fetch = CheckpointFetch(fleet=self.fleet, node=self.node, key=key, clock=clock, store=store, counters=counters,
                                     refusals=refusals, key_of=key_of, send=self._queue, report=self._report,
                                     timeout_s=2 * self._interval)

    def _queue(self, name: str, payload: bytes) -> None:
        try:
            self._out.put_nowait((name, payload))
        except asyncio.QueueFull:
            self._counters["audit_messages_dropped"] = self._counters.get("audit_messages_dropped", 0) + 1

    async def publish(self, client: Any) -> None:
        """For the session: publish the head (``_heads``) and what the fetch and the answers queued."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._heads(client), name="mqtt-audit-head-publish")
            tg.create_task(self._drain(client), name="mqtt-audit-queue")

    async def _drain(self, client: Any) -> None:
        while True:
            name, payload = await self._out.get()
            await publish_in_loop(client, name, payload, qos=1)

    async def _heads(self, client: Any) -> None:
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
            await self.fetch.expire()
            await asyncio.sleep(POLL_S)

    async def message(self, node: str, env: dict[str, Any]) -> None:
        """A peer's verified envelope of one of ``KINDS`` (body checked by peerwire)."""
        kind = env["kind"]
        if kind == HEAD:
            await self.witness(node, env["body"])
        elif kind == REQUEST:
            await self.fetch.answer(node, env)
        elif kind == ANSWER:
            await self.fetch.answered(node, env)
        else:
            try:
                reply = await answer_witness_request(self._store(), node, env, fleet=self.fleet, me=self.node, key=self._key,
                                                     clock=self._clock, rate=self._witness_rate)
            except Rejected as exc:
                self._refusals.refused("peer", node, exc)
            else:
                self._queue(*reply)
                self._counters["witness_answers"] = self._counters.get("witness_answers", 0) + 1

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
        verdict, changed = await self._store().witness_head(node, head, chain, key=key, hold_gap=True)
        if verdict.outcome == "gap":
            await self.fetch.start(node, head, chain)
            return
        self._report(node, verdict, changed)

    def _report(self, node: str, verdict: Verdict, changed: bool) -> None:
        """Count and log a judged head (a flag is audited by the store)."""
        if verdict.flagged:
            self._counters["heads_flagged"] = self._counters.get("heads_flagged", 0) + 1
            if changed:
                log.error("peer %s: audit trail %s: %s (audited as peer_audit_flagged)", node[:64],
                          verdict.outcome.replace("_", " "), verdict.detail)
        elif verdict.outcome == "gap" and changed:
            log.warning("peer %s: %s", node[:64], verdict.detail)
