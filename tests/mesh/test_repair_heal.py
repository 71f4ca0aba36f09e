"""Anti-entropy answers after a heal (agentd.mesh.repair) on a real broker, a real store and a real session.

A node answers a peer's digest with nothing when it holds that what the peer lacks has already
gone out after the peer's session subscribed: by its own resend, or relayed by another peer. That
must be a resend that really went out then. After a heal, peers subscribe within milliseconds of
each other and resends cross those subscriptions; a peer wrongly counted as served lacks the
write until its next periodic digest (30 s by default). The digests here come from peers that
exist only as their keys: each is signed by its peer and handed to the node's session as the
receiver hands it one (awaited in turn, so that the order is the test's); the node's answers are
read off the broker. The digest interval is an hour, so that no periodic digest helps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agentd.config.loader import parse_config
from agentd.decision.engine import Engine
from agentd.devtools.broker import Broker
from agentd.mesh.link import MeshLink
from agentd.mesh.wire import decision_wire
from agentd.state import digests
from agentd.trust.envelope import envelope
from agentd.trust.hlc import decode, encode
from agentd.trust.keys import NodeKey, create_key
from tests.conftest import wait_for

FLEET = "f"
ME = "a"
PEERS = ("p1", "p2", "p3", "relay")
LIMIT_S = 15.0  # how long a wait for the node's answer may take before the test fails (no timing is measured)


def _hlc(t: float) -> str:
    return encode((int(t * 1000), 0))


def _seconds(hlc: str) -> float:
    return decode(hlc)[0] / 1000


@dataclass
class Wire:
    """What the node publishes on its gossip topic, read by a plain subscriber: each resend batch's items."""

    digests: int = 0
    resent: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, decision id or write id, item HLC), in order
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        env = json.loads(msg.payload)
        with self.lock:
            if env["kind"] == "digest":
                self.digests += 1
            elif env["kind"] == "batch":
                for item in env["body"]["items"]:
                    ref = item["body"]["origin"]["id"] if item["kind"] == "state" else item["id"]
                    self.resent.append((item["kind"], ref, item["hlc"]))

    def mark(self) -> int:
        with self.lock:
            return len(self.resent)

    async def resent_since(self, mark: int, want: set[str]) -> dict[str, str]:
        """Wait until every ref in ``want`` was resent after ``mark``; each one's item HLC."""

        async def check() -> dict[str, str] | None:
            with self.lock:
                got = {ref: hlc for _, ref, hlc in self.resent[mark:] if ref in want}
            return got if set(got) == want else None

        found: dict[str, str] = await wait_for(check, limit_s=LIMIT_S)
        return found


@dataclass
class Node:
    link: MeshLink
    wire: Wire
    keys: dict[str, NodeKey]
    decision: str  # the id of the node's one decision
    write: dict[str, Any]  # its signed fleet-state write (the decision's), as any peer would relay it

    async def digest(self, peer: str, *, subscribed: float, made_at: float, counts: dict[str, Any] | None = None) -> None:
        """``peer``'s digest, made at ``made_at`` by a session subscribed at ``subscribed``: it holds nothing of ours
        (and ``counts`` of other nodes' decisions)."""
        body = {"since": time.time() - 3600, "counts": counts or {}, "writers": {}, "subscribed": subscribed}
        await self._take(peer, envelope("digest", fleet=FLEET, node=peer, hlc=_hlc(made_at), body=body, key=self.keys[peer]))

    async def relay(self, peer: str, *, sent_at: float) -> None:
        """``peer`` relays our write (as its resend does, alone here) in a message it sent at ``sent_at``."""
        payload = envelope("state", fleet=FLEET, node=peer, hlc=_hlc(sent_at), body={"origin": self.write}, key=self.keys[peer])
        await self._take(peer, payload)

    async def _take(self, peer: str, payload: bytes) -> None:
        before = dict(self.link.refusals.total)
        await self.link._gossip.peer_message(peer, "gossip", payload)  # what the receiver's task for it runs
        assert self.link.refusals.total == before, self.link.refusals.total


@contextlib.asynccontextmanager
async def _node(tmp_path: Path) -> AsyncIterator[Node]:
    """Node ``a`` on a real broker, connected, with one decision whose skill writes its fleet-state key."""
    broker = Broker(folder=tmp_path)
    broker.start()
    keys = {p: create_key(tmp_path / p)[0] for p in PEERS}
    data = tmp_path / ME
    loaded = parse_config(yaml.safe_dump({
        "node": {"id": ME, "fleet": FLEET, "data_dir": str(data)},
        "mqtt": {"enabled": True, "port": broker.port, "digest_interval_s": 3600},
        "trust": {"peers": {p: k.public_b64 for p, k in keys.items()}},
        "skills": [{"name": "s", "input": {"x": {"type": "number"}}, "actions": ["none", "alert"],
                    "rules": [{"name": "hot", "when": "x > 0.5", "action": "alert"}, {"name": "default", "action": "none", "default": True}],
                    "fleet_state": [{"action": "alert", "key": "alerting", "value": {"hot": True}, "ttl_s": 3600}]}],
    }))
    key, _ = create_key(data)
    wire = Wire()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-repair-watcher")
    watcher.on_message = wire.on_message
    subscribed = threading.Event()
    watcher.on_subscribe = lambda *_a: subscribed.set()
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    watcher.subscribe(f"agentd/v1/{FLEET}/gossip/{ME}", qos=1)
    try:
        assert await asyncio.to_thread(subscribed.wait, 10)
        async with Engine(loaded=loaded, key=key, run_handlers=False, outbound=decision_wire(loaded.config, key)) as engine:

            async def submit(skill: str, body: Any, event_id: str | None, received: float) -> dict[str, Any]:
                return await engine.decide(skill, body, event_id=event_id, received=received, origin="mqtt")

            link = MeshLink(cfg=loaded.config, key=key, clock=engine.clock, store=lambda: engine.store, submit=submit)
            task = asyncio.create_task(link.run())
            try:
                await wait_for(lambda: _true(wire.digests > 0), limit_s=LIMIT_S)  # its session's subscriptions are in place
                record = await engine.decide("s", {"x": 1.0}, event_id="e1")
                [(_, write)] = await engine.store.read(lambda c: digests.origins_by(c, writer=ME))
                await wait_for(lambda: engine.store.read(lambda c: c.execute("SELECT COUNT(*) = 0 FROM outbox").fetchone()[0]),
                               limit_s=LIMIT_S)  # the decision and the write went out live
                yield Node(link=link, wire=wire, keys=keys, decision=str(record["id"]), write=write)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await link.close()
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        broker.stop()


async def _true(value: bool) -> bool:
    return value


async def test_a_peer_that_subscribed_after_the_last_resend_is_answered_after_one_that_was_not(tmp_path: Path) -> None:
    """p2's digest needs no resend of the write (relayed after p2 subscribed): that must not count as
    a resend of it at the time of p2's digest. p3, subscribed after the relay and before p2's digest
    was taken, lacks the write and must get it."""
    async with _node(tmp_path) as node:
        mark = node.wire.mark()
        await node.digest("p1", subscribed=time.time() - 60, made_at=time.time())
        await node.wire.resent_since(mark, {node.decision, node.write["id"]})  # p1 lacked both: resent
        await asyncio.sleep(0.3)
        relayed = time.time()
        await node.relay("relay", sent_at=relayed)  # another peer relays the write
        await asyncio.sleep(0.3)
        # p2 subscribed after p1's resend and before the relay: the relay reached it, and its digest, made
        # as the relay went out, cannot show it yet; the decision is resent for it (it missed p1's resend)
        await node.digest("p2", subscribed=relayed - 0.1, made_at=relayed)
        await asyncio.sleep(0.3)
        mark = node.wire.mark()
        # p3 subscribed after the relay and before the decision's resend for p2: it lacks the write only
        await node.digest("p3", subscribed=relayed + 0.05, made_at=relayed + 0.06)
        await node.wire.resent_since(mark, {node.write["id"]})


async def test_a_relay_counts_from_when_it_went_out_not_from_when_the_node_took_it(tmp_path: Path) -> None:
    """A relay of our write that the node takes a second after it went out (a backlog) must not count
    for a peer that subscribed in that second."""
    async with _node(tmp_path) as node:
        sent = time.time() - 1.0
        await node.relay("relay", sent_at=sent)
        mark = node.wire.mark()
        await node.digest("p1", subscribed=sent + 0.5, made_at=time.time())
        await node.wire.resent_since(mark, {node.decision, node.write["id"]})


async def test_a_planned_resend_is_kept_when_a_relay_that_went_out_before_the_askers_digest_arrives(tmp_path: Path) -> None:
    """A relay taken while our resend of the same write waits for its batch: dropping ours is right only
    if the relay went out after the peer asked; an older one may have passed it by."""
    async with _node(tmp_path) as node:
        mark = node.wire.mark()
        now = time.time()
        await node.digest("p1", subscribed=now - 0.5, made_at=now)
        await node.relay("relay", sent_at=now - 1.0)  # within the batch's 50 ms: it went out before p1 subscribed
        await node.wire.resent_since(mark, {node.decision, node.write["id"]})


async def test_a_node_shown_behind_while_its_digest_waits_for_answers_asks_again_when_none_came(tmp_path: Path) -> None:
    """p2's digest shows the node lacks decisions of a node zz just after its own digest went out: the answers
    may be on their way, so it does not ask at once; none come (nobody here holds zz's), so it asks again
    once that digest is the resend grace old, instead of at its next periodic digest (an hour here)."""
    async with _node(tmp_path) as node:
        node.wire.digests = 0
        theirs = {"zz": [3, time.time() - 100]}  # settled long ago
        # p1 subscribed after our last digest went out: it could not have seen it, so we send ours at once
        await node.digest("p1", subscribed=time.time(), made_at=time.time(), counts=theirs)
        await wait_for(lambda: _true(node.wire.digests == 1), limit_s=LIMIT_S)
        await node.digest("p2", subscribed=time.time() - 60, made_at=time.time(), counts=theirs)  # it saw ours
        await wait_for(lambda: _true(node.wire.digests == 2), limit_s=LIMIT_S)
        assert node.link.counters["digests_asked_again"] == 1
