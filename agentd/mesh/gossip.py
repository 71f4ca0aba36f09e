"""Peers and anti-entropy: peer trust, peer messages in (status, decisions, digests, audit heads), digests out.

A peer's message is verified against the key configured for it (or, with
``trust.allow_unknown_peers``, the key its first status offered), its body checked, and a
message seen before dropped. A ``batch`` (``agentd.trust.batch``) is verified once and its
items then taken one by one, each checked as if it had come alone. The anti-entropy digests
and the resends they ask for are ``agentd.mesh.repair``'s; a ``state`` message is handed to
``on_state``, which checks the write inside against this node's own trust.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from agentd.errors import Rejected
from agentd.mesh.heads import KINDS as AUDIT_KINDS
from agentd.mesh.heads import Heads
from agentd.mesh.peerwire import check_peer_body, item_kinds
from agentd.mesh.repair import Repair
from agentd.trust.batch import BATCH, unbatch
from agentd.trust.envelope import check_envelope
from agentd.trust.hlc import decode as hlc_decode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from agentd.config.schema import Config
    from agentd.mesh.publisher import OutboxPublisher
    from agentd.mesh.refusals import RefusalTally
    from agentd.state.store import Store
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import NodeKey

log = logging.getLogger(__name__)
MAX_SEEN = 100_000  # envelope ids remembered to drop repeats


class Gossip:
    """One node's view of its peers: their keys, the messages seen, and the digest exchange."""

    def __init__(
        self,
        *,
        cfg: Config,
        store: Callable[[], Store],
        publisher: OutboxPublisher,
        key: NodeKey,
        clock: Clock,
        counters: dict[str, int],
        refusals: RefusalTally,
        on_peer_decision: Callable[[str, dict[str, Any]], None] | None = None,
        on_state: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
        learned_keys: dict[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.fleet, self.node = cfg.node.fleet, cfg.node.id
        self._key, self._clock, self._store, self._publisher = key, clock, store, publisher
        self._counters, self._refusals = counters, refusals
        self._on_peer_decision, self._on_state = on_peer_decision, on_state
        self._keys: dict[str, str] = {**(learned_keys or {}), **cfg.trust.peers}  # configured keys win
        self._learned = len(learned_keys or {})
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.repair = Repair(cfg=cfg, store=store, publisher=publisher, key=key, clock=clock, counters=counters,
                             peers=lambda: len(self._keys))
        self.heads = Heads(cfg=cfg, store=store, key=key, clock=clock, counters=counters, refusals=refusals, key_of=self.key_of)

    def update_trust(self, peers: dict[str, str]) -> None:
        """After a reload: configured peer keys replace the old ones; learned keys stay."""
        for node, key in peers.items():
            self._keys[node] = key

    def key_of(self, node: str) -> str | None:
        """The key trusted for peer ``node`` (configured, or learned on first use), or None."""
        return self._keys.get(node)

    def _key_for(self, node: str, env: dict[str, Any]) -> str | None:
        known = self._keys.get(node)
        if known is not None:
            return known
        if self.cfg.trust.allow_unknown_peers and env.get("kind") == "status":
            offered = env.get("body", {}).get("public_key")
            return offered if isinstance(offered, str) else None  # trust on first use, if it verifies
        return None

    async def peer_message(self, node: str, kind: str, raw: Any) -> None:
        """A message on peer ``node``'s ``kind`` topic (status, decisions, gossip): verify, check, store."""
        payload = raw if isinstance(raw, bytes) else str(raw).encode()
        if not payload:  # a cleared retained status
            return
        mesh = self.cfg.mesh
        now = time.time()
        try:
            env = check_envelope(
                payload, fleet=self.fleet, max_bytes=self.cfg.mqtt.max_payload_bytes, key_for=self._key_for,
                now_ms=int(now * 1000), max_skew_ms=int(mesh.max_clock_skew_s * 1000), accept_v1=mesh.accept_v1,
            )
            if env["node"] != node:
                raise Rejected("malformed", f"envelope of {env['node'][:64]!r} on {node[:64]!r}'s topic")
            check_peer_body(kind, env, now_s=now, max_skew_s=mesh.max_clock_skew_s)
        except Rejected as exc:
            self._refusals.refused("peer", node, exc)
            return
        self.repair.heard_from(node)
        if env["kind"] == BATCH:
            await self._batch(node, kind, env, now)
        else:
            await self._take(node, env)

    async def _batch(self, node: str, topic_kind: str, env: dict[str, Any], now: float) -> None:
        """A verified batch: each item checked and taken as the envelope it stands for; the bad ones refused alone."""
        mesh = self.cfg.mesh
        try:
            items = unbatch(env, allowed=item_kinds(topic_kind), now_ms=int(now * 1000), max_skew_ms=int(mesh.max_clock_skew_s * 1000))
        except Rejected as exc:
            self._refusals.refused("peer", node, exc)
            return
        self._clock.observe(env["hlc"], max_advance_ms=mesh.max_clock_advance_ms)
        self._counters["batches_in"] = self._counters.get("batches_in", 0) + 1
        taken = []
        for item in items:
            try:
                if isinstance(item, Rejected):
                    raise item
                check_peer_body(topic_kind, item, now_s=now, max_skew_s=mesh.max_clock_skew_s)
            except Rejected as exc:
                self._refusals.refused("peer", node, exc)
                continue
            taken.append(self._take(node, item, observed=True))
        failed = [r for r in await asyncio.gather(*taken, return_exceptions=True) if isinstance(r, BaseException)]
        if failed:  # every item had its turn; the first failure goes to the handler's boundary
            raise failed[0]

    async def _take(self, node: str, env: dict[str, Any], *, observed: bool = False) -> None:
        """A verified, checked envelope (or batch item): dropped if seen before, else handled by kind."""
        mesh = self.cfg.mesh
        if env["id"] in self._seen:
            self._refusals.add("peer", "duplicate", summarise=False)
            return
        self._seen[env["id"]] = None
        if len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
        if not observed:
            self._clock.observe(env["hlc"], max_advance_ms=mesh.max_clock_advance_ms)
        store = self._store()
        body = env["body"]
        if env["kind"] == "status":
            learned = node not in self._keys
            if learned:
                if self._learned >= mesh.max_learned_peers:
                    self._refusals.refused("peer", node, Rejected("too_many_peers", f"already {self._learned} learned peers (mesh.max_learned_peers)"))
                    return
                self._learned += 1
                self._keys[node] = str(body["public_key"])
                if self._learned <= 20 or self._learned % 100 == 0:
                    log.warning("learned the key of peer %s on first use (trust.allow_unknown_peers; %d learned)", node, self._learned)
            await store.upsert_peer(node, status=body["status"], hlc=env["hlc"], public_key=self._keys[node], learned=learned)
        elif env["kind"] == "digest":
            await self.repair.answer(node, body, hlc_decode(env["hlc"])[0] / 1000)
        elif env["kind"] == "state":
            self.repair.heard(body["origin"], sent_at=hlc_decode(env["hlc"])[0] / 1000)  # when the relay went out
            if self._on_state is not None:
                await self._on_state(node, env)
        elif env["kind"] in AUDIT_KINDS:  # audit heads, fetched checkpoints, the fleet's witness requests
            await self.heads.message(node, env)
        else:
            fresh = await store.record_peer_decision(node, body, env["hlc"])
            if fresh and self._on_peer_decision is not None:  # a resend must not count twice
                self._on_peer_decision(node, body)

    async def digests(self, client: Any) -> None:
        """The session's digests (``agentd.mesh.repair``): on connect, every digest interval, early when triggered."""
        await self.repair.digests(client)
