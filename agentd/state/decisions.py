"""A decision's rows: the write transaction of the hot path, approval resolution and late answers.

Functions here run on the store's writer thread inside its transaction; each audits what it
changes through the ``AuditLog`` it is given.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentd.errors import NotFound, StateError
from agentd.state import fleet_state, labels, queries
from agentd.trust.canonical import canonical, sha256_hex

if TYPE_CHECKING:
    from agentd.state.audit_log import AuditLog
    from agentd.state.labels import LabelWrite

OUTBOX_INSERT = "INSERT INTO outbox(topic, payload, qos, retain, created_at) VALUES (?,?,?,?,?)"
FLEET_INSERT = "INSERT OR IGNORE INTO fleet_decisions(node, decision_id, skill, action, ts, hlc) VALUES (?,?,?,?,?,?)"


@dataclass
class DecisionWrite:
    """Everything one decision writes, committed together.

    ``outbox_later`` builds more outbox rows (placed before ``outbox``) on the writer thread,
    inside the decision's transaction: the engine hands the decision's envelope signing there,
    off the event loop (libsodium lets go of the GIL while it signs, so it runs beside the loop).
    """

    event_id: str
    skill: str
    received_at: float
    data: dict[str, Any]
    record: dict[str, Any]
    node: str
    outbox: list[tuple[str, bytes, int, bool]] = field(default_factory=list)
    approval_expires_at: float | None = None
    record_canonical: bytes | None = None
    outbox_seqs: list[int] = field(default_factory=list)  # filled in by the writer
    state_writes: list[fleet_state.StateWrite] = field(default_factory=list)  # its node's own fleet-state keys (issue 16)
    outbox_later: Callable[[], list[tuple[str, bytes, int, bool]]] | None = None

    def resolve_outbox(self) -> None:
        """Build the rows of ``outbox_later`` (once: a batch redone after a rollback reuses them)."""
        if self.outbox_later is not None:
            rows = self.outbox_later()  # a failure leaves it set: the retry of the write fails again, never sends nothing
            self.outbox_later = None
            self.outbox[:0] = rows


class DuplicateEvent(StateError):
    """The event id already has a decision; nothing was written."""


def write_decisions(conn: sqlite3.Connection, audit: AuditLog, writes: list[DecisionWrite]) -> list[tuple[bool, Any]]:
    """Write a run of decisions with one statement per table (the hot path).

    Returns ``(True, None)`` per written decision and ``(False, DuplicateEvent)`` per event
    id that already has one; fills in each write's ``outbox_seqs``.
    """
    ids = [w.event_id for w in writes]
    existing: set[str] = set()
    for k in range(0, len(ids), 500):
        chunk = ids[k : k + 500]
        marks = ",".join("?" * len(chunk))
        existing.update(r[0] for r in conn.execute(f"SELECT id FROM events WHERE id IN ({marks})", chunk))
    results: list[tuple[bool, Any]] = []
    events: list[tuple[Any, ...]] = []
    decisions: list[tuple[Any, ...]] = []
    outbox: list[tuple[Any, ...]] = []
    approvals: list[tuple[Any, ...]] = []
    fleet: list[tuple[Any, ...]] = []
    sent: list[DecisionWrite] = []
    for w in writes:
        if w.event_id in existing:
            results.append((False, DuplicateEvent(f"event {w.event_id!r} already has a decision")))
            continue
        existing.add(w.event_id)
        results.append((True, None))
        w.resolve_outbox()
        r = w.record
        text = w.record_canonical if w.record_canonical is not None else canonical(r)
        events.append((w.event_id, w.skill, w.received_at, json.dumps(w.data, separators=(",", ":"))))
        decisions.append((
            r["id"], w.event_id, w.skill, r["action"], r["status"], r["source"], r["fallback_reason"], r["guard"],
            r["lifecycle"]["stage"], r["lifecycle"]["release"], r["created_at"], text.decode(),
        ))
        audit.append(conn, "decision", r["id"], audit_body(r, sha256_hex(text)))
        outbox.extend((t, p, q, int(retain), r["created_at"]) for t, p, q, retain in w.outbox)
        if w.outbox:
            sent.append(w)
        if w.approval_expires_at is not None:
            a = r["approval"]
            approvals.append((r["id"], w.skill, a["requested_action"], a["interim_action"], "pending", r["created_at"], w.approval_expires_at))
        fleet.append((w.node, r["id"], w.skill, r["action"], r["created_at"], r["hlc"]))
    conn.executemany("INSERT INTO events(id, skill, received_at, data) VALUES (?,?,?,?)", events)
    conn.executemany(
        "INSERT INTO decisions(id, event_id, skill, action, status, source, fallback_reason, guard,"
        " stage, release, created_at, record) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        decisions,
    )
    if outbox:
        conn.executemany(OUTBOX_INSERT, outbox)
        # AUTOINCREMENT under the write lock: this run's rows hold the last len(outbox) numbers, in order
        last = int(conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()[0])
        seq = last - len(outbox) + 1
        for w in sent:
            w.outbox_seqs = list(range(seq, seq + len(w.outbox)))
            seq += len(w.outbox)
    if approvals:
        conn.executemany(
            "INSERT INTO approvals(decision_id, skill, requested_action, interim_action, status,"
            " created_at, expires_at) VALUES (?,?,?,?,?,?,?)",
            approvals,
        )
    conn.executemany(FLEET_INSERT, fleet)
    state = [sw for w, (ok, _) in zip(writes, results, strict=True) if ok for sw in w.state_writes]
    if state:
        fleet_state.apply(conn, state)
    return results


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a human (or the expiry) answered a pending approval."""

    status: str  # approved, rejected or expired
    applied_action: str
    by: str
    reason: str
    when: float


@dataclass(frozen=True)
class Expiry:
    """One pending approval to expire (``Store.expire_approvals``): the action it applies, and the hook run with it."""

    decision_id: str
    applied_action: str
    after: Callable[[sqlite3.Connection, dict[str, Any]], None] | None = None


def resolve_approval(
    conn: sqlite3.Connection, audit: AuditLog, *, node: str, decision_id: str, answer: Resolution, only_pending: bool,
    label: LabelWrite | None = None, after: Callable[[sqlite3.Connection, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Apply ``answer`` to the approval, the stored record and the fleet row; audited; returns the record.

    ``label``, if given, is written (and audited) after the approval's audit record; ``after``
    then runs in the same transaction with the updated record (the fleet-state writes of the
    applied action, ``agentd.decision.approval_writes``).
    """
    row = conn.execute("SELECT status FROM approvals WHERE decision_id = ?", (decision_id,)).fetchone()
    if row is None:
        raise NotFound(f"no approval for decision {decision_id!r}")
    if only_pending and row[0] != "pending":
        raise NotFound(f"decision {decision_id!r} is not pending (it is {row[0]})")
    status, action, by, when = answer.status, answer.applied_action, answer.by, answer.when
    conn.execute(
        "UPDATE approvals SET status = ?, resolved_at = ?, resolved_by = ?, applied_action = ? WHERE decision_id = ?",
        (status, when, by, action, decision_id),
    )
    row = conn.execute("SELECT record, late_answer FROM decisions WHERE id = ?", (decision_id,)).fetchone()
    record = json.loads(row[0])  # as stored and audited; a late answer lives in its own column
    record["status"] = status
    record["action"] = action
    record["approval"] = {**record.get("approval", {}), "status": status, "resolved_by": by, "resolved_at": when, "reason": answer.reason}
    if status == "approved":
        record["source"] = "human"
    text = canonical(record)
    conn.execute(
        "UPDATE decisions SET status = ?, action = ?, source = ?, record = ? WHERE id = ?",
        (status, action, record["source"], text.decode(), decision_id),
    )
    conn.execute(
        "UPDATE fleet_decisions SET action = ?, ts = ? WHERE node = ? AND decision_id = ?", (action, when, node, decision_id)
    )
    audit.append(conn, "approval", decision_id, {**audit_body(record, sha256_hex(text)), "by": by, "reason": answer.reason})
    if label is not None:
        labels.insert(conn, audit, label)
    if after is not None:
        after(conn, record)
    if row[1] is not None:
        record["late_answer"] = json.loads(row[1])
    return dict(record)


def set_late_answer(conn: sqlite3.Connection, audit: AuditLog, decision_id: str, late: dict[str, Any]) -> None:
    """Attach a model's late answer to a decision (never acted on) and audit it."""
    conn.execute("UPDATE decisions SET late_answer = ? WHERE id = ?", (json.dumps(late, separators=(",", ":")), decision_id))
    audit.append(conn, "late_answer", decision_id, late)


def audit_body(record: dict[str, Any], digest: str | None = None) -> dict[str, Any]:
    """What the audit trail keeps of a decision: its identity, outcome and the record's digest."""
    return {
        "decision_id": record["id"],
        "event_id": record["event_id"],
        "skill": record["skill"],
        "action": record["action"],
        "status": record["status"],
        "source": record["source"],
        "record_sha256": digest or queries.record_digest(record),
    }
