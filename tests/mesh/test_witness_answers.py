"""The daemon's answer to a node's witness request (agentd.mesh.witness_answers) on a real store: from the
witness table, signed by this node, in the reply shape; refused when it asks about another node or over the rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentd.errors import Rejected
from agentd.mesh.witness_answers import Rate, answer_witness_request
from agentd.state.store import Store
from agentd.trust.canonical import canonical
from agentd.trust.hlc import Clock
from agentd.trust.keys import NodeKey, create_key, verify
from tests.trust.test_witness import chain


async def test_a_witness_request_is_answered_from_the_table(data_dir: Path, node_key: NodeKey, tmp_path: Path) -> None:
    peer = create_key(tmp_path / "peer")[0]
    cps = chain(peer, [5, 10], node="peer-a")
    rate = Rate(2)
    async with Store(data_dir=data_dir, key=node_key, node="me") as store:
        kw = {"fleet": "f", "me": "me", "key": node_key, "clock": Clock(), "rate": rate}
        topic, payload = await answer_witness_request(store, "peer-a", {"id": "q1", "hlc": Clock().now(), "body": {"node": "peer-a"}}, **kw)  # type: ignore[arg-type]
        env = json.loads(payload)
        assert topic == "agentd/v1/f/nodes/me/reply" and env["kind"] == "reply" and env["node"] == "me"
        assert env["body"] == {"command_id": "q1", "ok": True, "result": {"node": "peer-a", "witnessed": None, "witnessed_at": None,
                                                                          "state": None, "seen_seq": None, "anchor": None}}
        assert verify(node_key.public_b64, canonical({k: v for k, v in env.items() if k != "sig"}), env["sig"])
        await store.witness_head("peer-a", cps[1], cps[:1], key=peer.public_b64)
        _, payload = await answer_witness_request(store, "peer-a", {"id": "q2", "hlc": Clock().now(), "body": {"node": "peer-a"}}, **kw)  # type: ignore[arg-type]
        result = json.loads(payload)["body"]["result"]
        assert result["witnessed"] == cps[1].as_dict() and result["state"] == "first" and result["seen_seq"] == 10
        with pytest.raises(Rejected, match="queued for this node"):
            await answer_witness_request(store, "peer-a", {"id": "q0", "hlc": "1764590400000-0000", "body": {"node": "peer-a"}}, **kw)  # type: ignore[arg-type]
        with pytest.raises(Rejected, match="asks about itself"):
            await answer_witness_request(store, "peer-a", {"id": "q3", "hlc": Clock().now(), "body": {"node": "peer-b"}}, **kw)  # type: ignore[arg-type]
        with pytest.raises(Rejected) as exc:
            await answer_witness_request(store, "peer-a", {"id": "q4", "hlc": Clock().now(), "body": {"node": "peer-a"}}, **kw)  # type: ignore[arg-type]
        assert exc.value.reason == "rate_limited"
