"""agentd.store on real SQLite files: the one-transaction decision write, duplicates, approvals,
late answers, checkpoints, retention, tamper detection, and the node key file."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentd.errors import NotFound, StateError, TrustError
from agentd.state import queries
from agentd.state.audit_log import read_checkpoints
from agentd.state.decisions import Expiry
from agentd.state.migrations import MIGRATIONS
from agentd.state.store import DecisionWrite, DuplicateEvent, Store
from agentd.trust.audit import GENESIS, checkpoint_payload
from agentd.trust.canonical import canonical
from agentd.trust.keys import NodeKey, create_key, key_path, load_key

NODE = "test-node"


def record(
    rid: str, eid: str, *, action: str = "alert", status: str = "decided", created_at: float | None = None, **extra: Any
) -> dict[str, Any]:
    """A decision record shaped like the engine's."""
    return {
        "id": rid,
        "event_id": eid,
        "node": NODE,
        "skill": "freezer",
        "action": action,
        "status": status,
        "source": "rules",
        "model": None,
        "confidence": None,
        "fallback_reason": "model_missing",
        "rule": "warm",
        "guard": None,
        "latency_ms": 0.42,
        "stages": [],
        "late_answer": None,
        "hlc": "1700000000000-0000",
        "created_at": created_at if created_at is not None else round(time.time(), 6),
        "lifecycle": {"stage": "dev", "release": "test-1", "config_sha256": "0" * 64},
        "inputs": {"temperature_c": -5.0},
        **extra,
    }


def write_for(rec: dict[str, Any], *, outbox: int = 1, expires_at: float | None = None) -> DecisionWrite:
    rows = [(f"agentd/v1/f/nodes/{NODE}/decisions", canonical(rec), 1, False) for _ in range(outbox)]
    return DecisionWrite(rec["event_id"], rec["skill"], rec["created_at"], rec["inputs"], rec, NODE, rows, expires_at)


def pending(rid: str, eid: str, *, expires_at: float, created_at: float | None = None) -> DecisionWrite:
    rec = record(
        rid,
        eid,
        action="alert",
        status="pending_approval",
        created_at=created_at,
        approval={
            "requested_action": "shutdown",
            "interim_action": "alert",
            "status": "pending",
            "expires_at": expires_at,
        },
    )
    return write_for(rec, expires_at=expires_at)


def open_store(data_dir: Path, key: NodeKey, **kw: Any) -> Store:
    return Store(data_dir=data_dir, key=key, node=NODE, **kw)


def count(data_dir: Path, table: str, where: str = "") -> int:
    with sqlite3.connect(queries.db_path(data_dir)) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table} {where}").fetchone()[0])


def verify(data_dir: Path, key: NodeKey | None = None) -> Any:
    conn = queries.open_readonly(data_dir)
    try:
        return queries.verify_audit(conn, trusted_key=key.public_b64 if key else None)
    finally:
        conn.close()


def tamper(data_dir: Path, sql: str, *args: Any) -> None:
    conn = sqlite3.connect(queries.db_path(data_dir))
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


# -- the decision write ----------------------------------------------------------------


async def test_decision_writes_event_decision_audit_and_outbox(data_dir: Path, node_key: NodeKey) -> None:
    rec = record("d1", "e1")
    async with open_store(data_dir, node_key) as store:
        await store.record_decision(write_for(rec, outbox=2))
        got = await store.read(lambda c: queries.get_decision(c, "e1"))
        trail = await store.read(lambda c: queries.audit_for(c, "d1"))
    assert got == rec
    assert count(data_dir, "events") == 1
    assert count(data_dir, "decisions") == 1
    assert count(data_dir, "outbox") == 2
    assert count(data_dir, "fleet_decisions") == 1
    assert [a["kind"] for a in trail] == ["decision"]
    assert trail[0]["body"]["record_sha256"] == queries.record_digest(rec)
    assert trail[0]["body"]["action"] == "alert"
    assert verify(data_dir, node_key).ok


async def test_a_failing_decision_write_leaves_nothing_behind(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key) as store:
        await store.record_decision(write_for(record("d1", "e1")))
        # Fails after the event, decision and audit rows were inserted: no approval block.
        broken = write_for(record("d2", "e2"), expires_at=time.time() + 60)
        with pytest.raises(KeyError):
            await store.record_decision(broken)
        # Fails on the outbox insert: a payload sqlite cannot store.
        bad_outbox = write_for(record("d3", "e3"))
        bad_outbox.outbox = [("t", {"not": "bytes"}, 1, False)]  # type: ignore[list-item]
        with pytest.raises(StateError, match="write failed"):  # sqlite's error, wrapped at the store's boundary
            await store.record_decision(bad_outbox)
        await store.record_decision(write_for(record("d4", "e4")))
    assert count(data_dir, "events") == 2
    assert count(data_dir, "decisions") == 2
    assert count(data_dir, "outbox") == 2
    assert count(data_dir, "audit") == 2
    result = verify(data_dir, node_key)
    assert result.ok, result.problem  # the chain head was rolled back with the rows


async def test_outbox_rows_built_on_the_writer_thread_commit_with_their_decision(data_dir: Path, node_key: NodeKey) -> None:
    """``outbox_later`` (the engine's signing, moved off the event loop) runs once, inside the
    decision's transaction, ahead of the rows already given; a failure writes nothing, also when
    the batch it was in is redone one write at a time."""
    calls: list[str] = []

    def later(rid: str) -> Any:
        def build() -> list[tuple[str, bytes, int, bool]]:
            calls.append(rid)
            if rid == "d2":
                raise TrustError("cannot sign")
            return [("signed", rid.encode(), 1, False)]
        return build

    async with open_store(data_dir, node_key) as store:
        writes = [write_for(record(f"d{i}", f"e{i}")) for i in range(1, 4)]
        for w in writes:
            w.outbox_later = later(w.record["id"])
        results = await asyncio.gather(*(store.record_decision(w) for w in writes), return_exceptions=True)
        payloads = await store.read(lambda c: [(r[0], bytes(r[1])) for r in c.execute("SELECT topic, payload FROM outbox ORDER BY seq")])
    assert isinstance(results[1], TrustError) and results[0] is None and results[2] is None
    assert count(data_dir, "decisions", "WHERE id = 'd2'") == 0 and count(data_dir, "decisions") == 2
    signed = [p for t, p in payloads if t == "signed"]
    assert signed == [b"d1", b"d3"]  # each built once though the batch was redone, d2's never
    assert [t for t, _ in payloads] == ["signed", f"agentd/v1/f/nodes/{NODE}/decisions"] * 2  # ahead of the given rows
    assert calls.count("d1") == 1 and calls.count("d3") == 1
    assert writes[0].outbox_seqs and writes[2].outbox_seqs
    assert verify(data_dir, node_key).ok


async def test_concurrent_decisions_share_commits(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key) as store:
        await asyncio.gather(*(store.record_decision(write_for(record(f"d{i}", f"e{i}"))) for i in range(50)))
        commits = store.commits
    assert count(data_dir, "decisions") == 50
    assert commits < 50  # group commit: one commit carried many decisions
    assert verify(data_dir, node_key).ok


async def test_outbox_deletes_ride_with_the_next_decisions_commit(data_dir: Path, node_key: NodeKey,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Each delete after a PUBACK had a commit of its own, and the next event's decision queued behind it.
    from agentd.state import writer

    monkeypatch.setattr(writer, "RIDE_S", 30.0)  # no commit of its own within the test
    async with open_store(data_dir, node_key) as store:
        w1 = write_for(record("d1", "e1"))
        await store.record_decision(w1)
        commits = store.commits
        deleted = asyncio.ensure_future(store.delete_outbox(w1.outbox_seqs))
        await asyncio.sleep(0.2)
        assert not deleted.done() and store.commits == commits  # waiting for a commit to ride with
        await store.record_decision(write_for(record("d2", "e2")))
        await asyncio.wait_for(deleted, 5)
        assert store.commits == commits + 1  # the decision's commit carried the delete
        assert count(data_dir, "outbox") == 1  # d2's row; d1's is gone
        # a delete queued while a commit is in flight waits too: it does not get the next commit to itself
        release = threading.Event()
        busy = asyncio.ensure_future(store.write(lambda conn: release.wait(5)))
        await asyncio.sleep(0.1)  # that commit is on the writer thread now
        later = asyncio.ensure_future(store.delete_outbox([9999]))
        await asyncio.sleep(0.1)
        release.set()
        await busy
        await asyncio.sleep(0.2)
        assert store.commits == commits + 2 and not later.done()
        await store.flush()
        await asyncio.wait_for(later, 5)
        assert store.commits == commits + 3


async def test_an_outbox_delete_with_nothing_to_ride_with_commits_within_its_wait(data_dir: Path, node_key: NodeKey,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from agentd.state import writer

    monkeypatch.setattr(writer, "RIDE_S", 0.05)
    async with open_store(data_dir, node_key) as store:
        w = write_for(record("d1", "e1"))
        await store.record_decision(w)
        commits = store.commits
        await asyncio.wait_for(store.delete_outbox(w.outbox_seqs), 5)
        assert store.commits == commits + 1 and count(data_dir, "outbox") == 0


async def test_one_bad_decision_does_not_sink_its_batch(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key) as store:
        writes = [write_for(record(f"d{i}", f"e{i}")) for i in range(10)]
        writes[4] = write_for(record("dx", "e0"))  # a duplicate of e0, in the same batch
        results = await asyncio.gather(*(store.record_decision(w) for w in writes), return_exceptions=True)
    assert [type(r).__name__ for r in results].count("DuplicateEvent") == 1
    assert count(data_dir, "decisions") == 9
    assert verify(data_dir, node_key).ok


async def test_duplicate_event_id_writes_nothing_new(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key) as store:
        await store.record_decision(write_for(record("d1", "e1")))
        before = {t: count(data_dir, t) for t in ("events", "decisions", "audit", "outbox", "fleet_decisions")}
        with pytest.raises(DuplicateEvent, match="event 'e1' already has a decision"):
            await store.record_decision(write_for(record("d2", "e1", action="shutdown")))
        after = {t: count(data_dir, t) for t in before}
        got = await store.read(lambda c: queries.get_decision(c, "e1"))
        await store.audit("probe", {"n": 1})
    assert after == before
    assert got["id"] == "d1" and got["action"] == "alert"
    assert verify(data_dir, node_key).ok


async def test_chain_continues_across_reopen(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key) as store:
        await store.record_decision(write_for(record("d1", "e1")))
        await store.audit("stop", {})
    async with open_store(data_dir, node_key) as store:
        seq = await store.audit("start", {})
        await store.record_decision(write_for(record("d2", "e2")))
    assert seq == 3
    assert verify(data_dir, node_key).records == 4
    assert verify(data_dir, node_key).ok


# -- approvals and late answers ----------------------------------------------------------


async def test_approval_resolves_once(data_dir: Path, node_key: NodeKey) -> None:
    expires = time.time() + 900
    async with open_store(data_dir, node_key) as store:
        await store.record_decision(pending("d1", "e1", expires_at=expires))
        waiting = await store.read(queries.pending_approvals)
        rec = await store.resolve_approval(
            "d1", status="approved", applied_action="shutdown", by="alice", reason="checked"
        )
        with pytest.raises(NotFound, match="not pending"):
            await store.resolve_approval("d1", status="rejected", applied_action="alert", by="bob")
        with pytest.raises(NotFound, match="no approval"):
            await store.resolve_approval("nope", status="approved", applied_action="shutdown", by="alice")
        stored = await store.read(lambda c: queries.get_decision(c, "d1"))
        trail = await store.read(lambda c: queries.audit_for(c, "d1"))
        left = await store.read(queries.pending_approvals)
    assert [(w["decision_id"], w["requested_action"], w["interim_action"], w["expires_at"]) for w in waiting] == [
        ("d1", "shutdown", "alert", expires)
    ]
    assert rec["status"] == "approved" and rec["action"] == "shutdown" and rec["source"] == "human"
    assert rec["approval"]["resolved_by"] == "alice" and rec["approval"]["reason"] == "checked"
    assert stored["status"] == "approved" and stored["action"] == "shutdown"
    assert [a["kind"] for a in trail] == ["decision", "approval"]
    assert trail[1]["body"]["by"] == "alice" and trail[1]["body"]["action"] == "shutdown"
    assert left == []
    assert count(data_dir, "decisions", "WHERE status = 'approved' AND action = 'shutdown' AND source = 'human'") == 1
    assert (
        count(
            data_dir, "approvals", "WHERE status = 'approved' AND applied_action = 'shutdown' AND resolved_by = 'alice'"
        )
        == 1
    )
    assert verify(data_dir, node_key).ok


async def test_rejected_and_expired_approvals(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key) as store:
        await store.record_decision(pending("d1", "e1", expires_at=time.time() + 900))
        await store.record_decision(pending("d2", "e2", expires_at=time.time() + 900))
        rejected = await store.resolve_approval("d1", status="rejected", applied_action="alert", by="bob")
        expired = await store.resolve_approval("d2", status="expired", applied_action="alert", by="timeout")
    assert (rejected["status"], rejected["action"], rejected["source"]) == ("rejected", "alert", "rules")
    assert (expired["status"], expired["action"], expired["approval"]["resolved_by"]) == ("expired", "alert", "timeout")
    assert verify(data_dir, node_key).ok


async def test_approvals_expire_together_each_in_its_own_savepoint(data_dir: Path, node_key: NodeKey) -> None:
    def broken(conn: sqlite3.Connection, rec: dict[str, Any]) -> None:
        raise RuntimeError("the hook failed")

    async with open_store(data_dir, node_key) as store:
        for i in range(4):
            await store.record_decision(pending(f"d{i}", f"e{i}", expires_at=time.time() + 900))
        await store.resolve_approval("d1", status="approved", applied_action="shutdown", by="alice")
        commits = store._writer.commits
        out = await store.expire_approvals(
            [Expiry("d0", "alert"), Expiry("d1", "alert"), Expiry("d2", "alert", after=broken), Expiry("d3", "defrost")]
        )
        commits = store._writer.commits - commits
        left = await store.read(queries.pending_approvals)
        trail = {d: [a["kind"] for a in await store.read(lambda c, d=d: queries.audit_for(c, d))] for d in ("d0", "d2", "d3")}
    assert isinstance(out[0], dict) and (out[0]["status"], out[0]["action"]) == ("expired", "alert")
    assert out[1] is None  # approved meanwhile: left as it is
    assert isinstance(out[2], RuntimeError)  # its write failed: nothing of it written, the others kept
    assert isinstance(out[3], dict) and out[3]["action"] == "defrost" and out[3]["approval"]["resolved_by"] == "timeout"
    assert commits == 1
    assert [w["decision_id"] for w in left] == ["d2"]
    assert trail == {"d0": ["decision", "approval"], "d2": ["decision"], "d3": ["decision", "approval"]}
    assert count(data_dir, "approvals", "WHERE status = 'approved'") == 1
    assert verify(data_dir, node_key).ok


# Regression: resolving an approval used to drop the record's late_answer field.
async def test_resolved_decision_keeps_every_record_field(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key) as store:
        await store.record_decision(pending("d1", "e1", expires_at=time.time() + 900))
        await store.resolve_approval("d1", status="approved", applied_action="shutdown", by="alice")
        stored = await store.read(lambda c: queries.get_decision(c, "d1"))
    assert "late_answer" in stored


async def test_late_answer_is_recorded_and_audited(data_dir: Path, node_key: NodeKey) -> None:
    late = {"model": "slow", "answer": "warn", "confidence": 0.9, "latency_ms": 310.0}
    async with open_store(data_dir, node_key) as store:
        await store.record_decision(write_for(record("d1", "e1")))
        await store.set_late_answer("d1", late)
        got = await store.read(lambda c: queries.get_decision(c, "d1"))
        trail = await store.read(lambda c: queries.audit_for(c, "d1"))
    assert got["late_answer"] == late
    assert got["action"] == "alert"  # never acted on
    assert [a["kind"] for a in trail] == ["decision", "late_answer"]
    assert trail[1]["body"] == late
    assert verify(data_dir, node_key).ok


# -- checkpoints ----------------------------------------------------------------------------


async def test_checkpoints_signed_every_n_records_chained_and_at_close(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key, checkpoint_every=3) as store:
        for i in range(7):
            await store.audit("tick", {"i": i})
    with sqlite3.connect(queries.db_path(data_dir)) as conn:
        cps = read_checkpoints(conn)
        hashes = dict(conn.execute("SELECT seq, hash FROM audit"))
    assert [c.seq for c in cps] == [3, 6, 7]  # every 3 records, and the close leaves no unsigned tail
    prev = GENESIS
    for cp in cps:
        assert cp.hash == hashes[cp.seq] and cp.node == NODE and cp.public_key == node_key.public_b64
        assert cp.valid() and cp.v == 2 and cp.count == cp.seq and cp.prev == prev and (cp.every, cp.interval_s) == (3, 300.0)
        prev = cp.digest
    result = verify(data_dir, node_key)
    assert result.ok and result.checkpoints == 3 and result.tail is not None and result.tail.records == 0


async def test_checkpoint_count_survives_reopen_and_explicit_checkpoint(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key, checkpoint_every=3) as store:
        for i in range(4):
            await store.audit("tick", {"i": i})
    async with open_store(data_dir, node_key, checkpoint_every=3) as store:
        await store.audit("tick", {"i": 4})
        await store.audit("tick", {"i": 5})  # 3 since the checkpoint at 3
        await store.audit("tick", {"i": 6})
        await store.checkpoint()  # covers record 7
        await store.checkpoint()  # nothing new: no checkpoint
    with sqlite3.connect(queries.db_path(data_dir)) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM checkpoints ORDER BY seq")]
    assert seqs == [3, 4, 7]  # 4: the first store's close; 7: three records after it
    assert verify(data_dir, node_key).ok


# -- retention ------------------------------------------------------------------------------


# Regression: prune deleted events before the decisions referencing them (FOREIGN KEY constraint failed).
async def test_prune_by_age_keeps_pending_approvals(data_dir: Path, node_key: NodeKey) -> None:
    old = time.time() - 40 * 86400
    async with open_store(data_dir, node_key) as store:
        await store.record_decision(write_for(record("old", "e-old", created_at=old)))
        await store.record_decision(
            pending("old-pending", "e-old-pending", created_at=old, expires_at=time.time() + 60)
        )
        await store.record_decision(write_for(record("new", "e-new")))
        removed = await store.prune(max_age_s=30 * 86400, max_db_bytes=10**12, outbox_max_rows=10_000)
        left = {d["id"] for d in await store.read(lambda c: queries.list_decisions(c, limit=100))}
    assert removed["decisions"] == 1
    assert left == {"old-pending", "new"}
    assert count(data_dir, "events") == 2
    assert verify(data_dir, node_key).ok


async def test_prune_caps_the_outbox_oldest_first(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key) as store:
        for i in range(5):
            await store.record_decision(write_for(record(f"d{i}", f"e{i}"), outbox=30))
        result = await store.prune(max_age_s=86400, max_db_bytes=10**12, outbox_max_rows=100)
        trail = await store.read(lambda c: [a for a in queries.export_audit(c) if a["kind"] == "retention"])
    assert result == {"decisions": 0, "outbox_dropped": 50, "audit_pruned": 0}
    with sqlite3.connect(queries.db_path(data_dir)) as conn:
        assert conn.execute("SELECT MIN(seq), COUNT(*) FROM outbox").fetchone() == (51, 100)
    assert trail[0]["body"]["outbox_dropped"] == 50
    assert verify(data_dir, node_key).ok


async def test_audit_pruned_only_under_an_exported_checkpoint_and_no_kept_decision(data_dir: Path, node_key: NodeKey) -> None:
    old = time.time() - 40 * 86400
    async with open_store(data_dir, node_key, checkpoint_every=5) as store:
        for i in range(12):
            await store.record_decision(write_for(record(f"d{i}", f"e{i}", created_at=old if i < 9 else None)))
        await store.set_setting("audit_exported_seq", "7")  # an export covered records 1..7
        kept = await store.prune(max_age_s=50 * 86400, max_db_bytes=10**12, outbox_max_rows=10_000)
        pruned = await store.prune(max_age_s=30 * 86400, max_db_bytes=10**12, outbox_max_rows=10_000)
    assert kept["audit_pruned"] == 0  # every decision is kept, and with it its audit record
    assert pruned["decisions"] == 9
    assert pruned["audit_pruned"] == 5  # up to the checkpoint at 5, the newest the export covers
    with sqlite3.connect(queries.db_path(data_dir)) as conn:
        assert conn.execute("SELECT MIN(seq) FROM audit").fetchone()[0] == 6
        assert json.loads(queries.get_setting(conn, "audit_base") or "{}")["seq"] == 5
        retention = json.loads(conn.execute("SELECT body FROM audit WHERE kind = 'retention'").fetchone()[0])
        at = conn.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
        assert read_checkpoints(conn, "WHERE seq = ?", (at,)), "the retention record is signed in its transaction"
    assert retention["base"]["seq"] == 5 and retention["base"]["checkpoint"]
    assert verify(data_dir, node_key).ok
    async with open_store(data_dir, node_key, checkpoint_every=5) as store:  # the chain goes on from the base
        await store.audit("start", {})
    assert verify(data_dir, node_key).ok


# -- tamper detection with raw SQL -------------------------------------------------------------


@pytest.fixture
async def filled(data_dir: Path, node_key: NodeKey) -> Path:
    async with open_store(data_dir, node_key, checkpoint_every=100) as store:
        for i in range(1, 6):
            await store.record_decision(write_for(record(f"d{i}", f"e{i}")))
    assert verify(data_dir, node_key).ok
    return data_dir


async def test_audit_body_update_detected(filled: Path, node_key: NodeKey) -> None:
    tamper(filled, "UPDATE audit SET body = replace(body, '\"alert\"', '\"none\"') WHERE seq = 3")
    result = verify(filled, node_key)
    assert not result.ok and result.first_bad_seq == 3 and "record 3 was edited" in (result.problem or "")


async def test_audit_delete_detected(filled: Path, node_key: NodeKey) -> None:
    tamper(filled, "DELETE FROM audit WHERE seq = 2")
    result = verify(filled, node_key)
    assert not result.ok and result.first_bad_seq == 2 and "missing" in (result.problem or "")


async def test_audit_reorder_detected(filled: Path, node_key: NodeKey) -> None:
    conn = sqlite3.connect(queries.db_path(filled))
    r2 = conn.execute("SELECT ts, kind, ref, body, prev_hash, hash FROM audit WHERE seq = 2").fetchone()
    r3 = conn.execute("SELECT ts, kind, ref, body, prev_hash, hash FROM audit WHERE seq = 3").fetchone()
    conn.execute("UPDATE audit SET ts=?, kind=?, ref=?, body=?, prev_hash=?, hash=? WHERE seq = 2", r3)
    conn.execute("UPDATE audit SET ts=?, kind=?, ref=?, body=?, prev_hash=?, hash=? WHERE seq = 3", r2)
    conn.commit()
    conn.close()
    result = verify(filled, node_key)
    assert not result.ok and result.first_bad_seq == 2


async def test_decision_record_update_detected(filled: Path, node_key: NodeKey) -> None:
    conn = sqlite3.connect(queries.db_path(filled))
    rec = json.loads(conn.execute("SELECT record FROM decisions WHERE id = 'd3'").fetchone()[0])
    conn.close()
    rec["action"] = "none"
    tamper(filled, "UPDATE decisions SET record = ? WHERE id = 'd3'", json.dumps(rec))
    result = verify(filled, node_key)
    assert not result.ok and result.first_bad_seq == 3
    assert "decision d3 was edited after audit record 3" in (result.problem or "")


async def test_inserted_decision_detected(filled: Path, node_key: NodeKey) -> None:
    rec = record("forged", "e-forged")
    tamper(filled, "INSERT INTO events(id, skill, received_at, data) VALUES ('e-forged', 'freezer', 0, '{}')")
    tamper(
        filled,
        "INSERT INTO decisions(id, event_id, skill, action, status, source, stage, release, created_at, record)"
        " VALUES ('forged', 'e-forged', 'freezer', 'alert', 'decided', 'rules', 'dev', 'test-1', 0, ?)",
        json.dumps(rec),
    )
    result = verify(filled, node_key)
    assert not result.ok and "decision forged has no audit record" in (result.problem or "")


# Regression: a decision row deleted with raw SQL used to go unnoticed.
async def test_deleted_decision_detected(filled: Path, node_key: NodeKey) -> None:
    tamper(filled, "DELETE FROM decisions WHERE id = 'd3'")
    result = verify(filled, node_key)
    assert not result.ok and result.first_bad_seq == 3


async def test_decision_column_update_detected(filled: Path, node_key: NodeKey) -> None:
    # The columns feed `agentd decisions --source ...` and the status counts.
    tamper(filled, "UPDATE decisions SET action = 'none', source = 'model' WHERE id = 'd3'")
    result = verify(filled, node_key)
    assert not result.ok and result.first_bad_seq == 3
    assert "decision d3 was edited" in (result.problem or "")


async def test_forged_checkpoint_detected(filled: Path, node_key: NodeKey, tmp_path: Path) -> None:
    intruder = create_key(tmp_path / "intruder")[0]
    conn = sqlite3.connect(queries.db_path(filled))
    seq, h = conn.execute("SELECT seq, hash FROM audit WHERE seq = 4").fetchone()
    conn.close()
    sig = intruder.sign(checkpoint_payload(NODE, seq, h, 1.0))
    tamper(filled, "INSERT INTO checkpoints(seq, hash, ts, node, public_key, sig) VALUES (4, ?, 1.0, ?, ?, ?)",
           h, NODE, intruder.public_b64, sig)
    result = verify(filled, node_key)  # a valid signature by a key that is not this node's
    assert not result.ok and result.first_bad_seq == 4 and "unknown key" in (result.problem or "")


# -- database and key files ---------------------------------------------------------------------


async def test_schema_is_migrated_and_a_newer_schema_refused(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key):
        pass
    with sqlite3.connect(queries.db_path(data_dir)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StateError, match="newer than this agentd"):
        async with open_store(data_dir, node_key):
            pass


async def test_corrupt_database_is_a_state_error(data_dir: Path, node_key: NodeKey) -> None:
    queries.db_path(data_dir).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="cannot open database"):
        async with open_store(data_dir, node_key):
            pass


def test_readonly_open_of_a_missing_database_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no database yet"):
        queries.open_readonly(tmp_path)


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    key, created = create_key(tmp_path)
    path = key_path(tmp_path)
    assert created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    again, created_again = create_key(tmp_path)
    assert not created_again and again.public_b64 == key.public_b64
    assert load_key(tmp_path).public_b64 == key.public_b64
    assert not list(path.parent.glob("*.tmp"))


def test_load_key_refuses_a_key_readable_by_others(tmp_path: Path) -> None:
    create_key(tmp_path)
    os.chmod(key_path(tmp_path), 0o644)
    with pytest.raises(TrustError, match=r"mode is 0o644, must be 0600; run `chmod 600"):
        load_key(tmp_path)


def test_load_key_errors(tmp_path: Path) -> None:
    with pytest.raises(TrustError, match="no such key file; create one with `agentd keys init`"):
        load_key(tmp_path)
    path = key_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    os.chmod(path, 0o600)
    with pytest.raises(TrustError, match="cannot read node key"):
        load_key(tmp_path)


# Regression: a pending decision that retention kept and that was then deleted by hand went unnoticed.
async def test_deleting_a_decision_kept_by_retention_is_detected(data_dir: Path, node_key: NodeKey) -> None:
    old = time.time() - 40 * 86400
    async with open_store(data_dir, node_key) as store:
        await store.record_decision(pending("kept", "e-kept", created_at=old, expires_at=time.time() + 60))
        await store.record_decision(write_for(record("old", "e-old", created_at=old)))
        await store.prune(max_age_s=30 * 86400, max_db_bytes=10**12, outbox_max_rows=10_000)
    assert verify(data_dir, node_key).ok
    # The pending decision survived retention; removing it by hand must not pass as retention.
    tamper(data_dir, "DELETE FROM approvals WHERE decision_id = 'kept'")
    tamper(data_dir, "DELETE FROM decisions WHERE id = 'kept'")
    result = verify(data_dir, node_key)
    assert not result.ok and result.first_bad_seq == 1


# Regressions from the independent review of the store.


async def test_a_second_writer_on_the_same_database_keeps_one_chain(data_dir: Path, node_key: NodeKey) -> None:
    """`agentd decide` while the daemon runs: both append to the chain, neither breaks the other."""
    async with open_store(data_dir, node_key) as daemon_store:
        await daemon_store.record_decision(write_for(record("d1", "e1")))
        async with open_store(data_dir, node_key) as cli_store:
            await cli_store.audit("model_load", {"model": "m"})
            await cli_store.record_decision(write_for(record("d2", "e2")))
        await daemon_store.record_decision(write_for(record("d3", "e3")))
    assert count(data_dir, "decisions") == 3
    assert verify(data_dir, node_key).ok


async def test_a_closed_store_refuses_work_instead_of_hanging(data_dir: Path, node_key: NodeKey) -> None:
    store = open_store(data_dir, node_key)
    async with store:
        pass
    with pytest.raises(StateError, match="closed"):
        await store.audit("x", {})


async def test_size_retention_keeps_recent_decisions_when_the_audit_fills_the_cap(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key) as store:
        for i in range(50):
            await store.record_decision(write_for(record(f"d{i}", f"e{i}")))
        removed = await store.prune(max_age_s=86400, max_db_bytes=1, outbox_max_rows=10_000, min_keep_s=3600)
    assert removed["decisions"] == 0  # all younger than min_keep_s: the cap cannot be met by deleting them
    assert count(data_dir, "decisions") == 50


async def test_a_forged_audit_base_is_detected(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key) as store:
        for i in range(5):
            await store.record_decision(write_for(record(f"d{i}", f"e{i}")))
    with sqlite3.connect(queries.db_path(data_dir)) as conn:
        seq, h = conn.execute("SELECT seq, hash FROM audit WHERE seq = 3").fetchone()
        conn.execute("DELETE FROM audit WHERE seq <= 3")
        conn.execute("INSERT INTO settings(key, value) VALUES ('audit_base', ?)", (json.dumps({"seq": seq, "hash": h}),))
        conn.execute("DELETE FROM decisions WHERE id = 'd0'")
    result = verify(data_dir, node_key)
    assert not result.ok and "no signed checkpoint" in str(result.problem)


async def test_an_edited_approval_expiry_is_detected(data_dir: Path, node_key: NodeKey) -> None:
    async with open_store(data_dir, node_key) as store:
        await store.record_decision(pending("p1", "e-p1", expires_at=time.time() + 60))
    assert verify(data_dir, node_key).ok
    with sqlite3.connect(queries.db_path(data_dir)) as conn:
        conn.execute("UPDATE approvals SET expires_at = expires_at + 31536000")
    result = verify(data_dir, node_key)
    assert not result.ok and "approval" in str(result.problem)


async def test_only_soft_writes_skip_the_fsync_and_outbox_seqs_are_reported(data_dir: Path, node_key: NodeKey) -> None:
    """Peer state and outbox deletes alone commit with synchronous=NORMAL; anything else with FULL."""
    from agentd.state.store import Soft

    def sync(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    async with open_store(data_dir, node_key) as store:
        assert await store._submit(Soft(sync)) == 1  # NORMAL
        assert await store._submit(sync) == 2  # FULL
        assert await store._submit(Soft(sync)) == 1
        await store.record_decision(write_for(record("d1", "e1"), outbox=2))
        assert await store._submit(sync) == 2
        rows = await store.read(lambda c: c.execute("SELECT seq, payload FROM outbox ORDER BY seq").fetchall())
        assert store.outbox.ready.is_set()  # the publisher's wake-up
        fresh = store.outbox.take_fresh(0)
    assert [(m.seq, m.payload) for m in fresh] == [(s, bytes(p)) for s, p in rows] and len(rows) == 2
