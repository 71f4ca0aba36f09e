"""agentd.state.labels on real SQLite: a label and its audit record in one transaction, the latest
label counts, labels written with an approval's resolution, the eval export, tamper detection, retention."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agentd.errors import InputError, NotFound
from agentd.state import labels, queries, reports
from agentd.state.queries import DecisionFilter
from agentd.state.store import DecisionWrite, LabelWrite, Store

NODE = "test-node"


def record(rid: str, eid: str, *, skill: str = "freezer", created_at: float | None = None, **extra: Any) -> dict[str, Any]:
    """A decision record shaped like the engine's (decided by the rules)."""
    return {
        "id": rid, "event_id": eid, "node": NODE, "skill": skill, "action": "alert", "status": "decided", "source": "rules",
        "model": None, "confidence": None, "fallback_reason": "model_missing", "rule": "warm", "guard": None,
        "latency_ms": 0.4, "stages": [], "late_answer": None, "hlc": "1700000000000-0000",
        "created_at": created_at if created_at is not None else round(time.time(), 6),
        "lifecycle": {"stage": "dev", "release": "test-1", "config_sha256": "0" * 64},
        "inputs": {"temperature_c": -5.0}, **extra,
    }


def write(rec: dict[str, Any], expires_at: float | None = None) -> DecisionWrite:
    return DecisionWrite(rec["event_id"], rec["skill"], rec["created_at"], rec["inputs"], rec, NODE, [], expires_at)


def store(data_dir: Path, key: Any) -> Store:
    return Store(data_dir=data_dir, key=key, node=NODE)


def ro(data_dir: Path) -> sqlite3.Connection:
    return queries.open_readonly(data_dir)


def tamper(data_dir: Path, sql: str, *args: Any) -> None:
    conn = sqlite3.connect(queries.db_path(data_dir))
    try:
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


async def test_a_label_is_stored_and_audited_and_the_latest_counts(data_dir: Path, node_key: Any) -> None:
    async with store(data_dir, node_key) as st:
        rec = record("d1", "e1")
        await st.record_decision(write(rec))
        first = await st.add_label(labels.label_for(rec, "none", source="operator", by="alice", note="door sensor glitch"))
        second = await st.add_label(labels.label_for(rec, "defrost", source="operator", by="bob"))
    conn = ro(data_dir)
    rows = labels.for_decision(conn, "d1")
    assert [r["action"] for r in rows] == ["none", "defrost"] and rows[0] == first and second["id"] > first["id"]
    assert rows[0]["note"] == "door sensor glitch" and rows[0]["by"] == "alice" and rows[0]["source"] == "operator"
    audit = [a for a in queries.audit_for(conn, "d1") if a["kind"] == "label"]
    assert [a["body"]["action"] for a in audit] == ["none", "defrost"]
    assert audit[0]["body"] == {"label_id": first["id"], "decision_id": "d1", "event_id": "e1", "skill": "freezer",
                                "action": "none", "source": "operator", "by": "alice", "note": "door sensor glitch"}
    assert list(labels.export(conn)) == [{"id": "e1", "skill": "freezer", "data": {"temperature_c": -5.0}, "label": "defrost"}]
    assert queries.verify_audit(conn, trusted_key=node_key.public_b64).ok


def test_bounds_on_who_and_the_note() -> None:
    rec = record("d1", "e1")
    assert labels.label_for(rec, "none", source="operator", by="x" * 64, note="n" * 500).note == "n" * 500
    with pytest.raises(InputError, match="at most 500"):
        labels.label_for(rec, "none", source="operator", by="alice", note="n" * 501)
    with pytest.raises(InputError, match="1 to 64 characters"):
        labels.label_for(rec, "none", source="operator", by="x" * 65)
    with pytest.raises(InputError, match="1 to 64 characters"):
        labels.label_for(rec, "none", source="operator", by="")
    with pytest.raises(InputError, match="source 'guess' is unknown"):
        LabelWrite("d1", "e1", "freezer", "none", "guess", "alice")


async def test_a_label_for_an_unknown_decision_writes_nothing(data_dir: Path, node_key: Any) -> None:
    async with store(data_dir, node_key) as st:
        await st.record_decision(write(record("d1", "e1")))
        with pytest.raises(Exception, match="FOREIGN KEY"):
            await st.add_label(LabelWrite("nope", "e9", "freezer", "none", "operator", "alice"))
    conn = ro(data_dir)
    assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0
    assert queries.verify_audit(conn).ok


async def test_a_label_goes_with_the_approval_in_one_transaction(data_dir: Path, node_key: Any) -> None:
    expires = time.time() + 900
    approval = {"requested_action": "shutdown", "interim_action": "alert", "status": "pending", "expires_at": expires}
    async with store(data_dir, node_key) as st:
        rec = record("d1", "e1", status="pending_approval", approval=approval)
        await st.record_decision(write(rec, expires_at=expires))
        label = labels.label_for(rec, "shutdown", source="approval", by="alice")
        await st.resolve_approval("d1", status="approved", applied_action="shutdown", by="alice", label=label)
        with pytest.raises(NotFound, match="not pending"):  # a second resolution fails: its label is not written either
            await st.resolve_approval("d1", status="rejected", applied_action="none", by="bob",
                                      label=labels.label_for(rec, "none", source="rejection", by="bob"))
    conn = ro(data_dir)
    assert [(r["action"], r["source"], r["by"]) for r in labels.for_decision(conn, "d1")] == [("shutdown", "approval", "alice")]
    assert [a["kind"] for a in queries.audit_for(conn, "d1")] == ["decision", "approval", "label"]
    assert queries.verify_audit(conn).ok


async def test_an_edited_or_inserted_label_fails_verification(data_dir: Path, node_key: Any) -> None:
    async with store(data_dir, node_key) as st:
        rec = record("d1", "e1")
        await st.record_decision(write(rec))
        await st.add_label(labels.label_for(rec, "none", source="operator", by="alice"))
    tamper(data_dir, "UPDATE labels SET action = 'shutdown'")
    result = queries.verify_audit(ro(data_dir))
    assert not result.ok and "was edited after its audit record" in str(result.problem)
    tamper(data_dir, "UPDATE labels SET action = 'none'")
    assert queries.verify_audit(ro(data_dir)).ok
    tamper(data_dir, "INSERT INTO labels(decision_id, event_id, skill, action, source, by, note, created_at)"
                     " VALUES ('d1', 'e1', 'freezer', 'defrost', 'operator', 'mallory', '', ?)", time.time())
    result = queries.verify_audit(ro(data_dir))
    assert not result.ok and "has no audit record" in str(result.problem)


async def test_export_filters_by_skill_and_by_the_time_of_the_latest_label(data_dir: Path, node_key: Any) -> None:
    async with store(data_dir, node_key) as st:
        a, b, c = record("d1", "e1"), record("d2", "e2", skill="door"), record("d3", "e3")
        for rec in (a, b, c):
            await st.record_decision(write(rec))
        await st.add_label(LabelWrite("d1", "e1", "freezer", "none", "operator", "alice", created_at=1000.0))
        await st.add_label(labels.label_for(b, "close", source="operator", by="alice"))
        await st.add_label(labels.label_for(c, "alert", source="operator", by="alice"))
    conn = ro(data_dir)
    assert [line["id"] for line in labels.export(conn)] == ["e1", "e2", "e3"]
    assert [line["id"] for line in labels.export(conn, skill="freezer")] == ["e1", "e3"]
    assert [line["id"] for line in labels.export(conn, since=time.time() - 60)] == ["e2", "e3"]


async def test_labelled_decisions_come_with_their_shadow_answers(data_dir: Path, node_key: Any) -> None:
    async with store(data_dir, node_key) as st:
        a, b = record("d1", "e1"), record("d2", "e2")
        for rec in (a, b):
            await st.record_decision(write(rec))
        await st.add_label(labels.label_for(a, "none", source="operator", by="alice"))
        await st.add_label(labels.label_for(a, "alert", source="operator", by="bob"))
        shadow = reports.ShadowAnswer("d1", 1, "freezer", "slow", "2", "dev", "test-1", "accepted", "warn", "alert", 0.9, 3.0, "alert")
        await st.write(lambda conn: reports.insert(conn, shadow))
    got = labels.labelled(ro(data_dir), DecisionFilter())
    assert [(x.record["id"], x.label, x.source) for x in got] == [("d1", "alert", "operator")]  # d2 has no label
    assert got[0].shadows == [{"stage_index": 1, "model": "slow", "version": "2", "outcome": "accepted", "action": "alert", "confidence": 0.9}]
    assert labels.labelled(ro(data_dir), DecisionFilter(skill="door")) == []


async def test_retention_takes_a_decisions_labels_with_it(data_dir: Path, node_key: Any) -> None:
    old = time.time() - 40 * 86400
    async with store(data_dir, node_key) as st:
        rec = record("d1", "e1", created_at=old)
        await st.record_decision(write(rec))
        await st.add_label(labels.label_for(rec, "none", source="operator", by="alice"))
        result = await st.prune(max_age_s=30 * 86400, max_db_bytes=1 << 30, outbox_max_rows=1000)
    assert result["decisions"] == 1
    conn = ro(data_dir)
    assert conn.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == 0
    assert queries.verify_audit(conn).ok
