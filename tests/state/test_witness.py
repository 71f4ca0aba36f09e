"""The witness table (agentd.state.witness) through the store: heads kept, flags audited once, peers listed."""

from __future__ import annotations

import json
from pathlib import Path

from agentd.state import queries
from agentd.state.store import Store
from agentd.trust.keys import NodeKey, create_key
from tests.trust.test_witness import chain


async def test_a_peer_rolled_back_is_flagged_once_audited_and_stays_flagged(data_dir: Path, node_key: NodeKey, tmp_path: Path) -> None:
    peer = create_key(tmp_path / "peer")[0]
    key = peer.public_b64
    cps = chain(peer, [5, 10, 20], node="peer-a")
    async with Store(data_dir=data_dir, key=node_key, node="me") as store:
        await store.upsert_peer("peer-a", status="online", hlc="0000000000001-0000")
        assert (await store.witness_head("peer-a", cps[0], [], key=key))[0].outcome == "first"
        assert (await store.witness_head("peer-a", cps[2], cps[:2], key=key))[0].outcome == "consistent"
        verdict, changed = await store.witness_head("peer-a", cps[1], cps[:1], key=key)
        assert verdict.outcome == "rolled_back" and changed
        again, changed = await store.witness_head("peer-a", cps[1], cps[:1], key=key)
        assert again.outcome == "rolled_back" and not changed
        # a later head that extends the witnessed one does not clear the flag
        assert (await store.witness_head("peer-a", cps[2], cps[:2], key=key))[0].outcome == "rolled_back"
        flagged = await store.read(lambda c: c.execute("SELECT ref, body FROM audit WHERE kind = 'peer_audit_flagged'").fetchall())
        assert len(flagged) == 1 and flagged[0][0] == "peer-a"
        body = json.loads(flagged[0][1])
        assert body["outcome"] == "rolled_back" and body["witnessed"]["seq"] == 20 and body["seen"]["seq"] == 10
        peers = {p["node"]: p for p in await store.read(queries.list_peers)}
        assert peers["peer-a"]["audit_head"] == 20 and peers["peer-a"]["audit_state"] == "rolled back"
        assert peers["peer-a"]["witnessed_at"] is not None
