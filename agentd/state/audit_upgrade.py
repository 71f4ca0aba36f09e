"""What the writer does to the audit trail when it opens the database, before any other write.

A chain written by agentd before issue 15 has legacy (unchained) checkpoints only: it is
upgraded once, by an ``audit_upgrade`` record that binds the chain's current start (as a
retention record would) and a chained checkpoint over it. Where an older retention pruned
audit records of decisions it kept, those decisions (with their late answers and labels)
are audited again as they are stored now, so that from then on every kept decision has its
audit record in the kept chain: tampering before the upgrade cannot be detected (it could
not before either), tampering after it can.

A chain written since then whose unsigned tail is longer than its signed bound lost
checkpoints while the node was not looking (the writer never leaves such a tail): the node
records what it found in a sealed ``audit_gap`` record, which `agentd audit verify` reports.
A legacy chain is held to the records part of the bound too (legacy agentd also signed every
``checkpoint_every`` records): else someone with the database alone could rewrite a chain,
delete its checkpoints, set the schema back to before issue 15 and have the node sign the
rewrite as an upgrade.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from agentd.state import decisions, labels
from agentd.state.audit_log import base_of, read_checkpoints
from agentd.trust.audit import SEALS_NEXT

if TYPE_CHECKING:
    from agentd.state.audit_log import AuditLog

log = logging.getLogger(__name__)


def on_open(conn: sqlite3.Connection, audit: AuditLog, *, legacy: bool) -> None:
    """Upgrade a legacy chain (``legacy``: the schema was older than chained checkpoints), or
    record a tail found beyond its bound. Runs inside the writer's transaction."""
    if audit.head[0] == 0:
        return
    if legacy or (audit.last is not None and audit.last.v < 2):
        if audit.since_checkpoint > audit.bound.records:
            after = audit.head[0] - audit.since_checkpoint
            log.error("the legacy audit trail has %d records after its last checkpoint (at record %d), beyond the bound"
                      " of %d: checkpoints were deleted; recorded as audit_gap, see docs/OPERATIONS.md",
                      audit.since_checkpoint, after, audit.bound.records)
            audit.append(conn, "audit_gap", None, {"after_seq": after, "records": audit.since_checkpoint,
                                                   "bound_records": audit.bound.records, "legacy": True})
        _upgrade(conn, audit)
        return
    stop = _clean_stop(conn, audit)
    if stop is not None and audit.head[0] > stop:
        records = audit.head[0] - stop
        log.error("the audit trail has %d record(s) after the clean stop at record %d that no agentd session wrote (each"
                  " opens with a sealed record): they were appended while the node was stopped; recorded as audit_gap,"
                  " see docs/OPERATIONS.md", records, stop)
        audit.append(conn, "audit_gap", None, {"after_seq": stop, "records": records, "after_stop": True})
        return
    if stop is not None:  # this session's first record is sealed, as the stop promised
        audit.append(conn, "resume", None, {"after_stop": stop})
        return
    gap = audit.beyond_bound()
    if gap is not None:
        log.error("the audit trail has %d records after its last checkpoint (at record %d), beyond the bound it was"
                  " signed with: checkpoints were deleted; recorded as audit_gap, see docs/OPERATIONS.md",
                  gap["records"], gap["after_seq"])
        audit.append(conn, "audit_gap", None, gap)


def _clean_stop(conn: sqlite3.Connection, audit: AuditLog) -> int | None:
    """The seq of the newest checkpoint when it is at a clean stop that promised a sealed next record."""
    if audit.last is None:
        return None
    row = conn.execute("SELECT kind, body FROM audit WHERE seq = ?", (audit.last.seq,)).fetchone()
    if row is None or row[0] != "stop":
        return None
    try:
        body = json.loads(row[1])
    except ValueError:
        return None
    return audit.last.seq if isinstance(body, dict) and body.get(SEALS_NEXT) is True else None


def _upgrade(conn: sqlite3.Connection, audit: AuditLog) -> None:
    base_seq, base_hash = base_of(conn)
    legacy = read_checkpoints(conn)
    adopted = {"decisions": 0, "late_answers": 0, "labels": 0}
    base: dict[str, Any] | None = None
    if base_seq:
        anchor = next((c for c in legacy if c.seq == base_seq), None)
        base = {"seq": base_seq, "hash": base_hash, "checkpoint": anchor.digest if anchor else None}
        adopted = _adopt(conn, audit)
    audit.append(conn, "audit_upgrade", None, {"from": "legacy checkpoints", "legacy_checkpoints": len(legacy),
                                               "base": base, "adopted": adopted})
    log.info("audit trail upgraded to chained checkpoints (%d legacy checkpoint(s); audited again: %s)", len(legacy), adopted)


def _adopt(conn: sqlite3.Connection, audit: AuditLog) -> dict[str, int]:
    """Audit again what an older retention left without its audit record."""
    out = {"decisions": 0, "late_answers": 0, "labels": 0}
    for decision_id, record in conn.execute(
        "SELECT id, record FROM decisions WHERE id NOT IN"
        " (SELECT ref FROM audit WHERE kind IN ('decision', 'approval') AND ref IS NOT NULL) ORDER BY rowid"
    ).fetchall():
        audit.append(conn, "decision", decision_id, decisions.audit_body(json.loads(record)))
        out["decisions"] += 1
    for decision_id, late in conn.execute(
        "SELECT id, late_answer FROM decisions WHERE late_answer IS NOT NULL AND id NOT IN"
        " (SELECT ref FROM audit WHERE kind = 'late_answer' AND ref IS NOT NULL) ORDER BY rowid"
    ).fetchall():
        audit.append(conn, "late_answer", decision_id, json.loads(late))
        out["late_answers"] += 1
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'labels'").fetchone() is None:
        return out
    audited = {json.loads(b).get("label_id") for (b,) in conn.execute("SELECT body FROM audit WHERE kind = 'label'")}
    for values in conn.execute(f"SELECT {', '.join(labels.COLUMNS)} FROM labels ORDER BY id").fetchall():
        row = dict(zip(labels.COLUMNS, values, strict=True))
        if row["id"] not in audited:
            audit.append(conn, "label", row["decision_id"], labels.audit_body(row))
            out["labels"] += 1
    return out
