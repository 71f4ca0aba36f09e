"""``check_chain`` (agentd.ops.fleet_audit) on a real SQLite chain: what the peers witnessed must be in it,
and an anchor (the last head a peer verified before a gap) may not be pruned away."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from agentd.ops.fleet_audit import FleetCheck, Witness, check_chain
from agentd.state.migrations import migrate
from agentd.trust.keys import NodeKey
from tests.trust.test_witness import chain


def _db(tmp_path: Path, cps: list, *, base: int = 0) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    migrate(conn)
    for cp in cps:
        if cp.seq > base:
            conn.execute("INSERT INTO audit(seq, ts, kind, ref, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?)",
                         (cp.seq, 0.0, "decision", None, "{}", "0" * 64, cp.hash))
    if base:
        conn.execute("INSERT INTO settings(key, value) VALUES ('audit_base', ?)", (json.dumps({"seq": base, "hash": "f" * 64}),))
    return conn


def test_an_anchor_below_the_pruned_base_fails_where_a_head_there_is_only_unchecked(tmp_path: Path, node_key: NodeKey) -> None:
    cps = chain(node_key, [5, 10, 20, 40], node="me")
    keys = {node_key.public_b64}
    conn = _db(tmp_path, cps, base=15)  # records up to 15 pruned: 20 and 40 kept
    plain = check_chain(conn, FleetCheck(asked=["b"], answers=[Witness("b", cps[1], 1.0, "consistent")]), node="me", keys=keys)
    assert plain.ok and plain.unchecked and not plain.failures
    anchored = check_chain(conn, FleetCheck(asked=["b"], answers=[Witness("b", cps[3], 1.0, "gap", anchor=cps[1])]), node="me", keys=keys)
    assert not anchored.ok and "below the local chain's base" in anchored.failures[0] and "clear-flag" in anchored.failures[0]
    kept = check_chain(conn, FleetCheck(asked=["b"], answers=[Witness("b", cps[3], 1.0, "gap", anchor=cps[2])]), node="me", keys=keys)
    assert kept.ok and not kept.failures  # an anchor the chain still holds is fine


def test_an_anchor_the_chain_holds_with_another_hash_is_a_rewrite(tmp_path: Path, node_key: NodeKey) -> None:
    cps = chain(node_key, [5, 10, 20], node="me")
    other = chain(node_key, [5, 10, 20], tag="b", node="me")
    conn = _db(tmp_path, cps)
    check = check_chain(conn, FleetCheck(asked=["b"], answers=[Witness("b", cps[2], 1.0, "gap", anchor=other[1])]), node="me",
                        keys={node_key.public_b64})
    assert not check.ok and "rewritten" in check.failures[0]
