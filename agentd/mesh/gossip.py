"""Peers and anti-entropy: peer trust, peer messages in (status, decisions, digests, audit heads), digests out.

A peer's message is verified against the key configured for it (or, with
``trust.allow_unknown_peers``, the key its first status offered), its body checked, and a
message seen before dropped. Every ``mqtt.digest_interval_s`` (and at once on connect, when a
partition may have healed) the node tells its peers how many decisions of each node it holds;
a peer's digest that lacks some of ours gets them sent again. Which ones is decided by the
pure functions ``resend_after`` and ``due_for_resend``.

The digest also sums up the fleet-state map (``"state": {"n", "newest", "sha"}``, a hash over
every key's winning write). A peer whose sum differs is sent the signed writes newer than its
newest, or, when it is not behind in time (a partition wrote on both sides), every write held
(``state_to_send``); a ``state`` message is handed to ``on_state``, which checks the write
inside against this node's own trust.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from agentd.errors import Rejected
from agentd.mesh.heads import KINDS as AUDIT_KINDS
from agentd.mesh.heads import Heads
from agentd.mesh.peerwire import check_peer_body
from agentd.mesh.topics import topic
from agentd.mesh.transport import publish_in_loop
from agentd.state import fleet_state, queries
from agentd.trust.envelope import check_envelope, envelope
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
DIGEST_WINDOW_S = 24 * 3600.0  # anti-entropy covers the decisions fleet_count() can read
RESEND_GRACE_S = 1.0  # at most: time a resend is given to reach the peers before their digests count against it
MAX_SEEN = 100_000  # envelope ids remembered to drop repeats
MAX_RESENT = 100_000  # resend times remembered before the ones older than an hour are forgotten


def resend_after(theirs: Any, ours: list[Any], since: float) -> float | None:
    """Where to resend from when a peer holds ``theirs`` ([count, newest]) of our decisions and we
    made ``ours`` since ``since``: after the newest they have, or the whole window when the gap is
    in the middle (same newest, fewer). None when they miss none."""
    if not isinstance(theirs, list) or len(theirs) != 2 or theirs[0] >= ours[0]:
        return None
    return float(theirs[1]) if theirs[1] and float(theirs[1]) < ours[1] else float(since)


def due_for_resend(
    records: list[dict[str, Any]], resent_at: dict[str, float], *, made_at: float, grace_s: float
) -> list[dict[str, Any]]:
    """The records a digest made at ``made_at`` (peer HLC, seconds) may ask for again.

    A digest made before our last resend of a decision could reach the peer says nothing
    about that resend: resending again for it would only pile up behind congestion (and
    every peer's digest would ask). A digest made after that and still lacking it does.
    """
    return [r for r in records if made_at >= resent_at.get(str(r.get("id")), -1e18) + grace_s]


def state_to_send(theirs: Any, ours: dict[str, Any]) -> str | None:
    """From which HLC on to send our fleet-state writes to a peer whose digest says ``theirs``
    (``{"n", "newest", "sha"}``): after its newest, or "" (everything) when it is not behind us
    in time; None when the maps agree (or it says nothing: an older agentd)."""
    if not isinstance(theirs, dict) or not ours["n"] or theirs.get("sha") == ours["sha"]:
        return None
    newest = str(theirs.get("newest") or "")
    return newest if newest < ours["newest"] else ""


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
        self._answered_at = -1e9  # monotonic time of the last digest answered with a resend
        self._resent_at: dict[str, float] = {}  # decision id (or fleet-state key@HLC) -> when we last resent it
        self._state_answered_at = -1e9  # monotonic time of the last digest answered with fleet-state writes
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
        if env["id"] in self._seen:
            self._refusals.add("peer", "duplicate", summarise=False)
            return
        self._seen[env["id"]] = None
        if len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
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
            made_at = hlc_decode(env["hlc"])[0] / 1000
            await self._answer_digest(node, body, made_at)
            await self._answer_state(node, body.get("state"), made_at)
        elif env["kind"] == "state":
            if self._on_state is not None:
                await self._on_state(node, env)
        elif env["kind"] in AUDIT_KINDS:  # audit heads, fetched checkpoints, the fleet's witness requests
            await self.heads.message(node, env)
        else:
            fresh = await store.record_peer_decision(node, body, env["hlc"])
            if fresh and self._on_peer_decision is not None:  # a resend must not count twice
                self._on_peer_decision(node, body)

    async def digests(self, client: Any) -> None:
        """On connect, then every digest_interval_s: tell the peers how many decisions of each node we hold.

        The first digest goes out at once: a reconnect is when a partition may have healed.
        """
        while True:
            since = time.time() - DIGEST_WINDOW_S
            counts = await self._store().read(functools.partial(queries.fleet_digest, since=since))
            body = {"since": since, "counts": counts, "state": await self._store().read(fleet_state.digest)}
            payload = envelope("digest", fleet=self.fleet, node=self.node, hlc=self._clock.now(), body=body, key=self._key)
            await publish_in_loop(client, topic(self.fleet, "gossip", self.node), payload, qos=0)
            await asyncio.sleep(self.cfg.mqtt.digest_interval_s)

    async def _answer_digest(self, peer: str, body: dict[str, Any], made_at: float) -> None:
        """A peer's digest (made at ``made_at``, its HLC) shows fewer of our decisions than we made: send them again."""
        now = time.monotonic()
        # A resend on gossip/<node> reaches every peer: answer at most once per digest round.
        if now - self._answered_at < self.cfg.mqtt.digest_interval_s:
            return
        counts = body.get("counts")
        since = body.get("since")
        if not isinstance(counts, dict) or isinstance(since, bool) or not isinstance(since, int | float):
            return
        since = max(float(since), time.time() - DIGEST_WINDOW_S)  # a digest cannot ask for all of history
        theirs = counts.get(self.node) or [0, 0.0]
        store = self._store()
        ours = (await store.read(lambda c: queries.fleet_digest(c, float(since)))).get(self.node, [0, 0.0])
        after = resend_after(theirs, ours, since)
        if after is None:
            return
        records = await store.read(lambda c: queries.own_decisions_since(c, self.node, after))
        wall = time.time()
        grace = min(RESEND_GRACE_S, self.cfg.mqtt.digest_interval_s)
        records = due_for_resend(records, self._resent_at, made_at=made_at, grace_s=grace)
        if not records:
            return  # nothing to send: the round's slot stays free for a digest that needs it
        self._answered_at = now
        if len(self._resent_at) > MAX_RESENT:
            self._resent_at = {k: t for k, t in self._resent_at.items() if wall - t < 3600}
        for r in records:
            self._resent_at[str(r.get("id"))] = wall
        self._counters["resent"] = self._counters.get("resent", 0) + len(records)
        log.info("anti-entropy: %s holds %s of our %s decisions; resending %d", peer[:64], theirs[0], ours[0], len(records))
        self._publisher.resend(records)

    async def _answer_state(self, peer: str, theirs: Any, made_at: float) -> None:
        """A peer's digest sums up a fleet-state map unlike ours: relay the signed writes it may lack."""
        now = time.monotonic()
        if now - self._state_answered_at < self.cfg.mqtt.digest_interval_s:
            return  # a relay on gossip/<node> reaches every peer: once per digest round
        store = self._store()
        after = state_to_send(theirs, await store.read(fleet_state.digest))
        if after is None:
            return
        held = await store.read(functools.partial(fleet_state.origins, after=after))
        grace = min(RESEND_GRACE_S, self.cfg.mqtt.digest_interval_s)
        due = [(f"{k}@{h}", o) for k, h, o in held if made_at >= self._resent_at.get(f"{k}@{h}", -1e18) + grace]
        if not due:
            return
        self._state_answered_at = now
        wall = time.time()
        for ref, _ in due:
            self._resent_at[ref] = wall
        self._counters["state_resent"] = self._counters.get("state_resent", 0) + len(due)
        log.info("anti-entropy: %s holds another fleet state; relaying %d write(s)", peer[:64], len(due))
        self._publisher.resend_state([o for _, o in due])
