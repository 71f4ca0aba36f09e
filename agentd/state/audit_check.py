"""Verification of the node's audit trail against its own database (`agentd audit verify`).

``verify_audit`` walks the chain from the database's base with ``trust.audit.verify_chain``
(records, chained checkpoints, the pinned key, the base's retention record, the unsigned
tail's bound, sealed records) and then checks that every decision, approval, late answer
and label in the tables matches what the chain holds. Retention keeps the audit records of
every decision it keeps, so a kept decision without its audit record is always a forgery.

``latest_checkpoint`` and ``checkpoints_after`` give the signed heads as plain dicts: what a
node publishes for its peers to witness (issue 15, item 3).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from agentd.state import labels, queries
from agentd.state.audit_log import base_of, read_checkpoints
from agentd.trust.audit import DEFAULT_BOUND, Bound, VerifyResult, verify_chain


def verify_audit(conn: sqlite3.Connection, *, trusted_key: str | None = None, bound: Bound = DEFAULT_BOUND) -> VerifyResult:
    """Verify the hash chain, the checkpoints, and that every decision and label matches its audit record.

    ``trusted_key`` is the pinned public key (None: each checkpoint's own key, no anchor);
    ``bound`` is the tail bound of a chain with no chained checkpoint yet (the config's).
    """
    base_seq, base_hash = base_of(conn)
    result = verify_chain(queries.iter_audit(conn, 0), read_checkpoints(conn), base_seq=base_seq, base_hash=base_hash,
                          trusted_key=trusted_key, bound=bound)
    if not result.ok:
        return result
    seq, problem = check_tables(conn)
    if problem is not None:
        return VerifyResult(False, result.records, result.checkpoints, seq, problem, result.tail, result.key, result.head)
    return result


def check_tables(conn: sqlite3.Connection) -> tuple[int | None, str | None]:
    """``(seq, problem)`` for the first decision, approval, late answer or label that differs from the chain."""
    latest: dict[str, tuple[int, str]] = {}
    status: dict[str, str] = {}
    pruned_through = 0
    for seq, kind, ref, body in conn.execute(
        "SELECT seq, kind, ref, body FROM audit WHERE kind IN ('decision', 'approval', 'retention') ORDER BY seq"
    ):
        parsed = json.loads(body)
        if kind == "retention":
            pruned_through = max(pruned_through, int(parsed.get("pruned_through_seq") or 0))
            continue
        digest = parsed.get("record_sha256")
        if ref and digest:
            latest[ref] = (seq, digest)
            status[ref] = str(parsed.get("status"))
    present = {i for (i,) in conn.execute("SELECT id FROM decisions")}
    for ref, (seq, _) in latest.items():
        # retention never prunes a pending approval, nor anything newer than it pruned
        if ref not in present and (seq > pruned_through or status.get(ref) == "pending_approval"):
            return seq, f"decision {ref} (audit record {seq}) is missing from the decisions table (deleted?)"
    late_audited = {
        ref: body for ref, body in conn.execute("SELECT ref, body FROM audit WHERE kind = 'late_answer' ORDER BY seq")
    }
    columns = ("event_id", "skill", "action", "status", "source")
    for decision_id, record, late, *cols in conn.execute(
        f"SELECT id, record, late_answer, {', '.join(columns)} FROM decisions"
    ):
        known = latest.get(decision_id)
        if known is None:  # retention keeps a kept decision's audit records: none means it was never audited
            return None, f"decision {decision_id} has no audit record (inserted?)"
        parsed = json.loads(record)
        if queries.record_digest(parsed) != known[1]:
            return known[0], f"decision {decision_id} was edited after audit record {known[0]}"
        for name, value in zip(columns, cols, strict=True):
            if parsed.get(name) != value:
                return known[0], f"decision {decision_id} was edited: its {name} column differs from the audited record"
        if late is not None and (decision_id not in late_audited or json.loads(late) != json.loads(late_audited[decision_id])):
            return known[0], f"decision {decision_id}: its late answer differs from the audited one"
    for decision_id, status_, expires_at, requested in conn.execute(
        "SELECT a.decision_id, a.status, a.expires_at, a.requested_action FROM approvals a"
    ):
        row = conn.execute("SELECT record FROM decisions WHERE id = ?", (decision_id,)).fetchone()
        approval = json.loads(row[0]).get("approval", {}) if row else {}
        if (approval.get("status"), approval.get("expires_at"), approval.get("requested_action")) != (status_, expires_at, requested):
            return latest.get(decision_id, (None,))[0], f"approval of decision {decision_id} differs from the audited decision record"
    return None, labels.verify(conn)


def latest_checkpoint(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The newest signed checkpoint (the node's signed head) as a dict, or None before the first."""
    cps = read_checkpoints(conn, "WHERE seq = (SELECT MAX(seq) FROM checkpoints)")
    return cps[0].as_dict() if cps else None


def checkpoints_after(conn: sqlite3.Connection, after_seq: int, upto_seq: int | None = None) -> list[dict[str, Any]]:
    """The signed checkpoints with ``after_seq < seq <= upto_seq``, oldest first: what a peer that
    missed some fetches to check that a new head extends the last one it saw."""
    upto = upto_seq if upto_seq is not None else 2**62
    return [c.as_dict() for c in read_checkpoints(conn, "WHERE seq > ? AND seq <= ?", (after_seq, upto))]


def head_with_chain(conn: sqlite3.Connection, limit: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The newest signed checkpoint and up to ``limit`` chained ones before it (oldest first), as dicts:
    the body of the ``head`` message a node publishes for its peers to witness; None before the first."""
    head = latest_checkpoint(conn)
    if head is None:
        return None
    before = read_checkpoints(conn, "WHERE seq IN (SELECT seq FROM checkpoints WHERE seq < ? AND v >= 2 ORDER BY seq DESC LIMIT ?)",
                              (int(head["seq"]), limit))
    return head, [c.as_dict() for c in before]


def checkpoints_between(conn: sqlite3.Connection, after_seq: int, upto_seq: int, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """Up to ``limit`` chained checkpoints with ``after_seq <= seq < upto_seq``, oldest first, and the
    seq of the oldest checkpoint held (retention deletes those below the chain's base): a node's
    answer to a peer that missed some of its checkpoints (``agentd.mesh.checkpoint_fetch``)."""
    cps = read_checkpoints(conn, "WHERE seq IN (SELECT seq FROM checkpoints WHERE seq >= ? AND seq < ? AND v >= 2 ORDER BY seq LIMIT ?)",
                           (after_seq, upto_seq, limit))
    lowest = conn.execute("SELECT MIN(seq) FROM checkpoints WHERE v >= 2").fetchone()[0]
    return [c.as_dict() for c in cps], None if lowest is None else int(lowest)
