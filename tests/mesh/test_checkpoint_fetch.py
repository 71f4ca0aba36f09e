"""Both ends of the fetch of missed checkpoints (agentd.mesh.checkpoint_fetch) on a real store, without a
broker: what the requester sends, how it takes an answer (or none, or a bad one), and how a node
answers for its own checkpoints within its rate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agentd.mesh.checkpoint_fetch import ANSWERS_PER_S, CheckpointFetch
from agentd.mesh.refusals import RefusalTally
from agentd.state.store import Store
from agentd.trust.checkpoints import Checkpoint
from agentd.trust.hlc import Clock
from agentd.trust.keys import NodeKey, create_key
from agentd.trust.witness import Verdict
from tests.trust.test_witness import chain

PEER = "peer-a"


def _fetch(store: Store, me: NodeKey, peer: NodeKey, sent: list[tuple[str, bytes]], reports: list[Verdict],
           refusals: RefusalTally) -> CheckpointFetch:
    return CheckpointFetch(fleet="f", node="me", key=me, clock=Clock(), store=lambda: store, counters={}, refusals=refusals,
                           key_of=lambda n: peer.public_b64 if n == PEER else None, send=lambda t, p: sent.append((t, p)),
                           report=lambda n, v, c: reports.append(v), timeout_s=1.0)


def _answer(request: bytes, cps: list[Checkpoint], *, more: bool = False, to: str = "me") -> dict[str, Any]:
    rid = json.loads(request)["id"]
    return {"id": "x", "body": {"to": to, "request": rid, "checkpoints": [c.as_dict() for c in cps], "more": more, "lowest": 5}}


async def test_a_gap_is_fetched_and_judged_and_an_unanswered_one_stays_a_gap(data_dir: Path, node_key: NodeKey, tmp_path: Path) -> None:
    peer = create_key(tmp_path / "peer")[0]
    cps = chain(peer, [5, 10, 20, 30, 40, 50], node=PEER)
    sent: list[tuple[str, bytes]] = []
    reports: list[Verdict] = []
    refusals = RefusalTally()
    async with Store(data_dir=data_dir, key=node_key, node="me") as store:
        fetch = _fetch(store, node_key, peer, sent, reports, refusals)
        await store.witness_head(PEER, cps[0], [], key=peer.public_b64)
        await fetch.start(PEER, cps[5], cps[4:5])
        [(topic, request)] = sent
        assert topic == "agentd/v1/f/gossip/me" and json.loads(request)["body"] == {"node": PEER, "after": 5, "upto": 50}
        await fetch.start(PEER, cps[5], cps[4:5])
        assert len(sent) == 1  # one fetch per node at a time
        await fetch.answered(PEER, _answer(request, cps[:4], to="someone-else"))
        assert not reports  # another peer's fetch
        await fetch.answered(PEER, _answer(request, cps[:2], more=True))  # a page: its last becomes the witnessed head
        assert len(sent) == 2 and json.loads(sent[1][1])["body"]["after"] == 10
        await fetch.answered(PEER, _answer(sent[1][1], cps[1:4]))
        assert [v.outcome for v in reports] == ["consistent"]
        assert (await store.read(lambda c: c.execute("SELECT seq, state FROM witness").fetchone())) == (50, "consistent")

        later = chain(peer, [5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100], node=PEER)
        await fetch.start(PEER, later[10], later[9:10])  # no answer comes
        fetch._pending[PEER].deadline = 0.0
        await fetch.expire()
        assert reports[-1].outcome == "gap"
        assert (await store.read(lambda c: c.execute("SELECT seq, state FROM witness").fetchone())) == (100, "gap")


async def test_a_bad_answer_is_refused_and_leaves_a_gap(data_dir: Path, node_key: NodeKey, tmp_path: Path) -> None:
    peer, other = create_key(tmp_path / "peer")[0], create_key(tmp_path / "other")[0]
    cps = chain(peer, [5, 10, 20, 30, 40, 50], node=PEER)
    sent: list[tuple[str, bytes]] = []
    reports: list[Verdict] = []
    refusals = RefusalTally()
    async with Store(data_dir=data_dir, key=node_key, node="me") as store:
        fetch = _fetch(store, node_key, peer, sent, reports, refusals)
        await store.witness_head(PEER, cps[0], [], key=peer.public_b64)
        await fetch.start(PEER, cps[5], cps[4:5])
        forged = chain(other, [5, 10, 20], node=PEER)  # signed by a key the node is not trusted with
        await fetch.answered(PEER, _answer(sent[0][1], forged))
        assert refusals.total["peer.bad_head"] == 1 and reports[-1].outcome == "gap"
        await fetch.start(PEER, chain(peer, [5, 10, 20, 30, 40, 50, 60], node=PEER)[6], [])
        await fetch.answered(PEER, _answer(sent[1][1], chain(peer, [70], node=PEER)))  # outside the range asked
        assert refusals.total["peer.bad_head"] == 2
        await fetch.start(PEER, chain(peer, [5, 10, 20, 30, 40, 50, 60, 70], node=PEER)[7], [])
        witnessed = (await store.read(lambda c: c.execute("SELECT seq FROM witness").fetchone()))[0]
        stuck = [c for c in chain(peer, [5, 10, 20, 30, 40, 50, 60], node=PEER) if c.seq == witnessed] * 3
        await fetch.answered(PEER, _answer(sent[2][1], stuck, more=True))  # "more", but no progress: no endless paging
        assert refusals.total["peer.bad_head"] == 3 and len(sent) == 3


async def test_a_node_answers_for_its_own_checkpoints_within_its_rate(data_dir: Path, node_key: NodeKey, tmp_path: Path) -> None:
    peer = create_key(tmp_path / "peer")[0]
    sent: list[tuple[str, bytes]] = []
    refusals = RefusalTally()
    async with Store(data_dir=data_dir, key=node_key, node="me") as store:
        for i in range(5):
            await store.audit("test", {"i": i})
            await store.checkpoint()
        fetch = _fetch(store, node_key, peer, sent, [], refusals)
        await fetch.answer(PEER, {"id": "r1", "hlc": Clock().now(), "body": {"node": "someone-else", "after": 1, "upto": 9}})
        assert not sent  # about another node: not ours to answer
        await fetch.answer(PEER, {"id": "r0", "hlc": "1764590400000-0000", "body": {"node": "me", "after": 1, "upto": 9}})
        assert not sent  # made long ago: queued for this node while it was away
        await fetch.answer(PEER, {"id": "r2", "hlc": Clock().now(), "body": {"node": "me", "after": 2, "upto": 5}})
        body = json.loads(sent[0][1])["body"]
        assert body["to"] == PEER and body["request"] == "r2" and [c["seq"] for c in body["checkpoints"]] == [2, 3, 4]
        assert body["more"] is False and body["lowest"] == 1
        assert all(Checkpoint.from_dict(c).valid() for c in body["checkpoints"])
        for i in range(ANSWERS_PER_S + 5):
            await fetch.answer(PEER, {"id": f"f{i}", "hlc": Clock().now(), "body": {"node": "me", "after": 1, "upto": 5}})
        assert len(sent) == ANSWERS_PER_S and refusals.total["peer.rate_limited"] == 6
