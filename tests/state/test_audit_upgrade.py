"""agentd.state.audit_upgrade: a database an agentd before issue 15 wrote (legacy, unchained
checkpoints; retention that pruned the audit records of decisions it kept) verifies after the
upgrade, and tampering after the upgrade is detected."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from agentd.state import queries
from agentd.state.store import Store
from agentd.trust.audit import VerifyResult
from agentd.trust.checkpoints import checkpoint_payload
from agentd.trust.keys import NodeKey
from tests.state.test_store import NODE, record, write_for


async def legacy(data_dir: Path, key: NodeKey, *, prune_at: int | None) -> None:
    """Six decisions, then the database as agentd before issue 15 left it (optionally pruned at a checkpoint)."""
    async with Store(data_dir=data_dir, key=key, node=NODE, checkpoint_every=3) as store:
        for i in range(6):
            await store.record_decision(write_for(record(f"d{i}", f"e{i}")))
    conn = sqlite3.connect(queries.db_path(data_dir), isolation_level=None)
    for seq, h, ts in conn.execute("SELECT seq, hash, ts FROM checkpoints").fetchall():
        conn.execute("UPDATE checkpoints SET sig = ? WHERE seq = ?", (key.sign(checkpoint_payload(NODE, seq, h, ts)), seq))
    for column in ("v", "count", "prev", "every", "interval_s"):
        conn.execute(f"ALTER TABLE checkpoints DROP COLUMN {column}")
    conn.execute("DROP TABLE witness")  # migration 7's, after the legacy schema
    conn.execute("PRAGMA user_version = 5")
    if prune_at is not None:  # the old retention: the audit trail cut at an exported checkpoint, the decisions kept
        h = conn.execute("SELECT hash FROM checkpoints WHERE seq = ?", (prune_at,)).fetchone()[0]
        conn.execute("DELETE FROM audit WHERE seq <= ?", (prune_at,))
        conn.execute("DELETE FROM checkpoints WHERE seq < ?", (prune_at,))
        conn.execute("INSERT INTO settings(key, value) VALUES ('audit_base', ?)", (json.dumps({"seq": prune_at, "hash": h}),))
    conn.close()


def verify(data_dir: Path, key: NodeKey) -> VerifyResult:
    conn = queries.open_readonly(data_dir)
    try:
        return queries.verify_audit(conn, trusted_key=key.public_b64)
    finally:
        conn.close()


async def test_a_legacy_chain_verifies_before_and_after_its_upgrade(data_dir: Path, node_key: NodeKey) -> None:
    await legacy(data_dir, node_key, prune_at=None)
    before = verify(data_dir, node_key)
    assert before.ok, before
    async with Store(data_dir=data_dir, key=node_key, node=NODE):
        pass
    conn = queries.open_readonly(data_dir)
    upgrade = conn.execute("SELECT seq, body FROM audit WHERE kind = 'audit_upgrade'").fetchone()
    cps = conn.execute("SELECT seq, v FROM checkpoints ORDER BY seq").fetchall()
    conn.close()
    assert upgrade is not None and json.loads(upgrade[1])["legacy_checkpoints"] == 2
    assert cps == [(3, 1), (6, 1), (upgrade[0], 2)]
    assert verify(data_dir, node_key).ok


async def test_a_legacy_pruned_chain_is_bound_and_its_decisions_audited_again(data_dir: Path, node_key: NodeKey) -> None:
    await legacy(data_dir, node_key, prune_at=3)
    before = verify(data_dir, node_key)
    assert not before.ok and "no signed retention record binds that start" in str(before.problem)
    async with Store(data_dir=data_dir, key=node_key, node=NODE):
        pass
    conn = queries.open_readonly(data_dir)
    body = json.loads(conn.execute("SELECT body FROM audit WHERE kind = 'audit_upgrade'").fetchone()[0])
    conn.close()
    assert body["base"]["seq"] == 3 and body["adopted"] == {"decisions": 3, "late_answers": 0, "labels": 0}
    assert verify(data_dir, node_key).ok
    with sqlite3.connect(queries.db_path(data_dir)) as db:  # an adopted decision is now guarded like any other
        db.execute("UPDATE decisions SET record = json_set(record, '$.action', 'none'), action = 'none' WHERE id = 'd0'")
    after = verify(data_dir, node_key)
    assert not after.ok and "decision d0 was edited" in str(after.problem)
