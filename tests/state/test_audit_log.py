"""agentd.state.audit_log: when the writer signs, the chain of checkpoints it keeps, key rotation,
and what it records when it finds its checkpoints gone (state.audit_upgrade.on_open)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agentd.state import queries
from agentd.state.audit_log import AuditLog, read_checkpoints
from agentd.state.migrations import migrate
from agentd.state.store import Store
from agentd.trust.checkpoints import GENESIS
from agentd.trust.keys import NodeKey, create_key

NODE = "test-node"


def fresh(tmp_path: Path, key: NodeKey, *, every: int = 100, interval_s: float = 10.0) -> tuple[sqlite3.Connection, AuditLog]:
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    migrate(conn)
    log = AuditLog(key=key, node=NODE, checkpoint_every=every, checkpoint_interval_s=interval_s)
    log.reload(conn)
    return conn, log


def test_a_record_past_the_interval_makes_the_commit_sign(tmp_path: Path, node_key: NodeKey) -> None:
    conn, log = fresh(tmp_path, node_key)
    log.append(conn, "tick", None, {}, ts=1000.0)
    log.append(conn, "tick", None, {}, ts=1009.0)
    assert not log.checkpoint_due  # 9 s since the first unsigned record, the bound is 10 s
    log.append(conn, "tick", None, {}, ts=1010.5)
    assert log.checkpoint_due
    log.checkpoint(conn)
    log.append(conn, "tick", None, {}, ts=1011.0)
    assert not log.checkpoint_due
    cp = read_checkpoints(conn)[0]
    assert (cp.seq, cp.prev, cp.every, cp.interval_s) == (3, GENESIS, 100, 10.0) and cp.ts >= 1010.5


def test_a_changed_bound_is_signed_at_the_next_record(tmp_path: Path, node_key: NodeKey) -> None:
    conn, log = fresh(tmp_path, node_key, every=100)
    log.append(conn, "tick", None, {})
    log.checkpoint(conn)
    wider = AuditLog(key=node_key, node=NODE, checkpoint_every=1000, checkpoint_interval_s=10.0)
    wider.reload(conn)
    assert not wider.checkpoint_due  # nothing unsigned yet
    wider.append(conn, "tick", None, {})
    assert wider.checkpoint_due
    wider.checkpoint(conn)
    first, second = read_checkpoints(conn)
    assert second.prev == first.digest and second.every == 1000


def test_sealed_records_get_a_checkpoint_at_themselves(tmp_path: Path, node_key: NodeKey) -> None:
    conn, log = fresh(tmp_path, node_key)
    log.append(conn, "start", None, {})
    seq = log.append(conn, "stop", None, {"reason": "signal"})
    assert [c.seq for c in read_checkpoints(conn)] == [seq]


def test_a_rolled_back_checkpoint_is_forgotten(tmp_path: Path, node_key: NodeKey) -> None:
    conn, log = fresh(tmp_path, node_key)
    log.append(conn, "tick", None, {})
    conn.execute("BEGIN")
    mark = log.mark()
    log.append(conn, "stop", None, {})
    conn.execute("ROLLBACK")
    log.rewind(mark)
    log.append(conn, "tick", None, {})
    log.checkpoint(conn)
    assert [(c.seq, c.prev) for c in read_checkpoints(conn)] == [(2, GENESIS)]


async def test_a_key_rotation_keeps_history_verifiable_with_either_key(data_dir: Path, node_key: NodeKey, tmp_path: Path) -> None:
    new = create_key(tmp_path / "new")[0]
    async with Store(data_dir=data_dir, key=node_key, node=NODE, checkpoint_every=3) as store:
        for i in range(4):
            await store.audit("tick", {"i": i})
        rotated_at = await store.rotate_key(new)
        for i in range(4):
            await store.audit("tick", {"i": i})
    conn = queries.open_readonly(data_dir)
    cps = read_checkpoints(conn)
    assert {c.public_key for c in cps if c.seq < rotated_at} == {node_key.public_b64}
    assert {c.public_key for c in cps if c.seq >= rotated_at} == {new.public_b64}
    for pinned in (node_key.public_b64, new.public_b64):
        result = queries.verify_audit(conn, trusted_key=pinned)
        assert result.ok and result.key == new.public_b64, result
    other = create_key(tmp_path / "other")[0]
    assert not queries.verify_audit(conn, trusted_key=other.public_b64).ok


async def test_checkpoints_deleted_behind_the_nodes_back_are_recorded_at_open(data_dir: Path, node_key: NodeKey) -> None:
    async with Store(data_dir=data_dir, key=node_key, node=NODE, checkpoint_every=3) as store:
        for i in range(10):
            await store.audit("tick", {"i": i})
    with sqlite3.connect(queries.db_path(data_dir)) as conn:
        conn.execute("DELETE FROM checkpoints")
    async with Store(data_dir=data_dir, key=node_key, node=NODE, checkpoint_every=3):
        pass
    conn = queries.open_readonly(data_dir)
    gap = conn.execute("SELECT seq, body FROM audit WHERE kind = 'audit_gap'").fetchone()
    assert gap is not None and '"records":10' in gap[1]
    result = queries.verify_audit(conn, trusted_key=node_key.public_b64)
    assert not result.ok and "found its checkpoints missing" in str(result.problem)


async def test_a_crash_tail_within_the_bound_is_no_gap(data_dir: Path, node_key: NodeKey) -> None:
    async with Store(data_dir=data_dir, key=node_key, node=NODE, checkpoint_every=5) as store:
        for i in range(7):
            await store.audit("tick", {"i": i})
    with sqlite3.connect(queries.db_path(data_dir)) as conn:  # as if the process died before its close signed 6 and 7
        conn.execute("DELETE FROM checkpoints WHERE seq = 7")
    conn = queries.open_readonly(data_dir)
    result = queries.verify_audit(conn, trusted_key=node_key.public_b64)
    assert result.ok and result.tail is not None and (result.tail.after_seq, result.tail.records) == (5, 2)
    async with Store(data_dir=data_dir, key=node_key, node=NODE, checkpoint_every=5):
        pass
    assert conn.execute("SELECT COUNT(*) FROM audit WHERE kind = 'audit_gap'").fetchone()[0] == 0
    assert queries.verify_audit(conn, trusted_key=node_key.public_b64).ok
