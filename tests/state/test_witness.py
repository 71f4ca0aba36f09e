"""The witness table (agentd.state.witness) through the store: heads kept, flags audited once, peers listed."""

from __future__ import annotations

import json
from pathlib import Path

from agentd.state import queries
from agentd.state.store import Store
from agentd.state.witness import witness_row
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


async def test_a_cleared_flag_is_audited_and_witnessing_starts_again(data_dir: Path, node_key: NodeKey, tmp_path: Path) -> None:
    import pytest

    from agentd.errors import NotFound, StateError

    peer = create_key(tmp_path / "peer")[0]
    key = peer.public_b64
    cps = chain(peer, [5, 10, 20], node="peer-a")
    async with Store(data_dir=data_dir, key=node_key, node="me") as store:
        await store.upsert_peer("peer-a", status="online", hlc="0000000000001-0000")
        with pytest.raises(NotFound):
            await store.clear_peer_flag("peer-a", by="alice", reason="x")
        await store.witness_head("peer-a", cps[2], cps[:2], key=key)
        with pytest.raises(StateError, match="not flagged"):
            await store.clear_peer_flag("peer-a", by="alice", reason="x")
        assert (await store.witness_head("peer-a", cps[1], cps[:1], key=key))[0].outcome == "rolled_back"
        result = await store.clear_peer_flag("peer-a", by="alice", reason="restored after a disk failure")
        assert result["cleared"]["state"] == "rolled_back" and result["cleared"]["witnessed"]["seq"] == 20
        peers = {p["node"]: p for p in await store.read(queries.list_peers)}
        assert peers["peer-a"]["audit_state"] == "flag cleared"
        assert (await store.witness_head("peer-a", cps[1], cps[:1], key=key))[0].outcome == "first"  # the lower head, afresh
        assert (await store.witness_head("peer-a", cps[0], [], key=key))[0].outcome == "rolled_back"  # and judged from it on
        rows = await store.read(lambda c: c.execute("SELECT ref, body FROM audit WHERE kind = 'peer_flag_cleared'").fetchall())
        assert len(rows) == 1 and json.loads(rows[0][1])["reason"] == "restored after a disk failure"
        assert json.loads(rows[0][1])["by"] == "alice"


async def test_a_head_taken_over_a_gap_keeps_the_last_verified_head_as_the_anchor(data_dir: Path, node_key: NodeKey, tmp_path: Path) -> None:
    peer = create_key(tmp_path / "peer")[0]
    key = peer.public_b64
    cps = chain(peer, [5, 10, 20, 40, 80], node="peer-a")
    async with Store(data_dir=data_dir, key=node_key, node="me") as store:
        await store.upsert_peer("peer-a", status="online", hlc="0000000000001-0000")
        assert (await store.witness_head("peer-a", cps[1], cps[:1], key=key))[0].outcome == "first"
        assert (await store.witness_head("peer-a", cps[3], [], key=key))[0].outcome == "gap"  # 20 never seen: unchecked
        row = await store.read(lambda c: witness_row(c, "peer-a"))
        assert row is not None and row["head"]["seq"] == 40 and row["anchor"]["seq"] == 10  # the evidence stays
        assert (await store.witness_head("peer-a", cps[4], cps[3:4], key=key))[0].outcome == "consistent"
        row = await store.read(lambda c: witness_row(c, "peer-a"))
        assert row is not None and row["head"]["seq"] == 80 and row["anchor"]["seq"] == 10  # a later link does not reach it
        listed = {p["node"]: p for p in await store.read(queries.list_peers)}
        assert listed["peer-a"]["audit_anchor"] == 10
        cleared = await store.clear_peer_flag("peer-a", by="alice", reason="the node pruned after an export; checked it")
        assert cleared["cleared"]["anchor"]["seq"] == 10
        row = await store.read(lambda c: witness_row(c, "peer-a"))
        assert row is not None and row["anchor"] is None
