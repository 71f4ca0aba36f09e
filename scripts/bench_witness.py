"""What a witness message costs the peer that receives it (issue 15): CPU µs per message, in one run.

Each message is a real signed envelope from a peer handed to ``Gossip.peer_message``, the path a
message on ``gossip/<peer>`` or ``nodes/<peer>/status`` takes after the MQTT read: envelope check
(parse, Ed25519), body bounds (peerwire), and its handler, which for a head parses the
checkpoints, checks the head's key and signature, and judges and stores it on the store's
writer thread (one signature per chained checkpoint, one row). The envelopes are made before
the clock starts. Kinds:

- ``status`` (the baseline): a peer's status message, one presence row (a soft write);
- ``head, repeat``: the same head again, as a node sends it every digest round (most heads);
- ``head, new``: a new head with the 4 chained checkpoints a node sends (judged through them);
- ``head, 16``: a new head with the 16 a receiver takes at most;
- ``fetch answer``: a ``checkpoints_request`` answered with 32 checkpoints (read, signed);
- ``fetch page``: a page of 32 fetched checkpoints judged (33 signatures, one row).

CPU time of the process (``time.process_time``: the event loop and the writer thread),
``synchronous=normal``; rounds interleaved, each starting at another kind, the best round kept.

    .venv/bin/python scripts/bench_witness.py                   # 200 messages a kind, best of 15 rounds (about a minute)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from agentd.config.loader import load_config
from agentd.ids import new_id
from agentd.mesh.gossip import Gossip
from agentd.mesh.refusals import RefusalTally
from agentd.state.store import Store
from agentd.trust.checkpoints import GENESIS, Bound, Checkpoint, make_checkpoint
from agentd.trust.envelope import envelope
from agentd.trust.hlc import Clock
from agentd.trust.keys import NodeKey, create_key

REPO = Path(__file__).resolve().parent.parent
PEER, ME, FLEET = "peer-a", "bench", "bench-fleet"
KINDS = ("status", "head, repeat", "head, new", "head, 16", "fetch answer", "fetch page")


def _chain(key: NodeKey, n: int, node: str = PEER) -> list[Checkpoint]:
    out, prev = [], GENESIS
    for i in range(1, n + 1):
        cp = make_checkpoint(key, node=node, seq=i * 10, hash_=f"{i:064x}", ts=time.time(), prev=prev, bound=Bound(10, 300.0))
        out.append(cp)
        prev = cp.digest
    return out


class _NoPublisher:
    def resend(self, records: list[dict[str, Any]]) -> None: ...

    def resend_state(self, origins: list[Any]) -> None: ...


def _env(kind: str, key: NodeKey, body: dict[str, Any], node: str = PEER) -> bytes:
    return envelope(kind, fleet=FLEET, node=node, hlc=Clock().now(), body=body, key=key, ident=new_id())


async def _round(kind: str, n: int, folder: Path, peer: NodeKey, me: NodeKey, cfg: Any) -> float:
    """CPU µs per message of ``kind`` over ``n`` messages, on a fresh database."""
    data = folder / f"{kind.replace(' ', '').replace(',', '')}-{time.monotonic_ns()}"
    async with Store(data_dir=data, key=me, node=ME, synchronous="normal") as store:
        await store.upsert_peer(PEER, status="online", hlc=Clock().now(), public_key=peer.public_b64)
        counters: dict[str, int] = {}
        gossip = Gossip(cfg=cfg, store=lambda: store, publisher=_NoPublisher(), key=me, clock=Clock(),  # type: ignore[arg-type]
                        counters=counters, refusals=RefusalTally())
        topic_kind = "status" if kind == "status" else "gossip"
        if kind == "status":
            msgs = [_env("status", peer, {"status": "online", "public_key": peer.public_b64}) for _ in range(n)]
        elif kind == "head, repeat":
            cps = _chain(peer, 5)
            await store.witness_head(PEER, cps[-1], cps[:-1], key=peer.public_b64)
            body = {"head": cps[-1].as_dict(), "chain": [c.as_dict() for c in cps[:-1]]}
            msgs = [_env("head", peer, body) for _ in range(n)]
        elif kind in ("head, new", "head, 16"):
            width = 4 if kind == "head, new" else 16
            cps = _chain(peer, n + width + 1)
            await store.witness_head(PEER, cps[width], cps[:width], key=peer.public_b64)
            msgs = [_env("head", peer, {"head": cps[i].as_dict(), "chain": [c.as_dict() for c in cps[i - width:i]]})
                    for i in range(width + 1, width + 1 + n)]
        elif kind == "fetch answer":  # this node answers for its own checkpoints: sign them first
            own = _chain(me, 40, node=ME)
            await store.write(lambda c: c.executemany(
                "INSERT INTO checkpoints(seq, hash, ts, node, public_key, sig, v, count, prev, every, interval_s) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(x.seq, x.hash, x.ts, x.node, x.public_key, x.sig, x.v, x.count, x.prev, x.every, x.interval_s) for x in own]))
            msgs = [_env("checkpoints_request", peer, {"node": ME, "after": 10, "upto": 400}) for _ in range(n)]
        else:  # a page of 32 fetched checkpoints from the peer, judged from the witnessed one
            cps = _chain(peer, 34)
            await store.witness_head(PEER, cps[0], [], key=peer.public_b64)
            fetch = gossip.heads.fetch
            msgs = []
            for _ in range(n):
                rid = new_id()
                msgs.append(_env("checkpoints", peer, {"to": ME, "request": rid, "checkpoints": [c.as_dict() for c in cps[:32]],
                                                     "more": True, "lowest": 10}))
            pending = [json.loads(m)["body"]["request"] for m in msgs]
        elapsed = 0.0
        for i, msg in enumerate(msgs):
            if kind == "fetch page":  # each page answers a request of ours, from the same witnessed head (not timed)
                await store.write(lambda c: c.execute("UPDATE witness SET head = ?, seq = ? WHERE node = ?",
                                                      (json.dumps(cps[0].as_dict()), cps[0].seq, PEER)))
                fetch._pending.pop(PEER, None)
                await fetch.start(PEER, cps[33], [])
                fetch._pending[PEER].request = pending[i]
            elif kind == "fetch answer":
                gossip.heads.fetch._answered.clear()
            start = time.process_time()
            await gossip.peer_message(PEER, topic_kind, msg)
            elapsed += time.process_time() - start
        if kind == "fetch answer" and counters.get("checkpoint_answers") != n:
            raise SystemExit(f"fetch answer: {counters.get('checkpoint_answers')} answers of {n}; the bench is wrong")
        if kind == "fetch page" and counters.get("checkpoint_fetches", 0) < n:
            raise SystemExit(f"fetch page: {counters.get('checkpoint_fetches')} pages judged consistent of {n}; the bench is wrong")
        if kind.startswith("head") and counters.get("heads_flagged"):
            raise SystemExit(f"{kind}: judged flagged; the bench is wrong")
        return elapsed / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200, help="messages per kind and round")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentd-bench-witness-") as tmp:
        folder = Path(tmp)
        peer, me = create_key(folder / "peer")[0], create_key(folder / "me")[0]
        loaded = load_config(REPO / "config" / "agentd.yaml")
        c = loaded.config
        cfg = c.model_copy(update={"node": c.node.model_copy(update={"id": ME, "fleet": FLEET}),
                                   "trust": c.trust.model_copy(update={"peers": {PEER: peer.public_b64}})})
        best = {k: float("inf") for k in KINDS}
        for k in KINDS:  # warm-up
            await _round(k, 20, folder, peer, me, cfg)
        for r in range(args.rounds):
            for k in KINDS[r % len(KINDS):] + KINDS[:r % len(KINDS)]:
                best[k] = min(best[k], await _round(k, args.n, folder, peer, me, cfg))
    base = best["status"]
    if args.json:
        print(json.dumps({"us_per_message": best, "baseline": "status"}, indent=2))
        return
    print(f"CPU µs per message, best of {args.rounds} rounds of {args.n}")
    for k in KINDS:
        print(f"  {k:<14} {best[k]:8.1f} µs   x{best[k] / base:.2f} of a status message")


if __name__ == "__main__":
    asyncio.run(main())
