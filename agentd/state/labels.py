"""Labels: the right action for a decision, as a person said it (DESIGN section 5).

An operator's label (`agentd label`, the fleet command ``label``), an approval (the
requested action was right) and a rejection that names a replacement action are all
labels. A decision may have several; the latest counts. Each is audited (kind ``label``,
ref the decision id) in the transaction that writes it.

``insert`` runs on the store's writer thread inside its transaction; the reads serve
`agentd label export` (the `agentd eval` format), `agentd report` and ``verify``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentd.errors import InputError

if TYPE_CHECKING:
    from agentd.state.audit_log import AuditLog
    from agentd.state.queries import DecisionFilter

MAX_NOTE = 500
MAX_BY = 64
SOURCES = ("operator", "approval", "rejection")
COLUMNS = ("id", "decision_id", "event_id", "skill", "action", "source", "by", "note", "created_at")
# The latest label of each decision (a later label corrects an earlier one).
LATEST = f"SELECT {', '.join(COLUMNS)} FROM labels WHERE id IN (SELECT MAX(id) FROM labels GROUP BY decision_id)"


@dataclass(frozen=True, slots=True)
class LabelWrite:
    """One label to write; refuses an unknown source and over-long ``by`` or ``note`` (InputError)."""

    decision_id: str
    event_id: str
    skill: str
    action: str
    source: str
    by: str
    note: str = ""
    created_at: float = field(default_factory=lambda: round(time.time(), 6))

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InputError(f"label source {self.source!r} is unknown (known: {', '.join(SOURCES)})")
        if not 0 < len(self.by) <= MAX_BY:
            raise InputError(f"who labels ('by') must be 1 to {MAX_BY} characters, not {len(self.by)}")
        if len(self.note) > MAX_NOTE:
            raise InputError(f"a label's note is {len(self.note)} characters; at most {MAX_NOTE}: shorten it")


def label_for(record: dict[str, Any], action: str, *, source: str, by: str, note: str = "") -> LabelWrite:
    """The label ``action`` for the decision ``record``."""
    return LabelWrite(record["id"], record["event_id"], record["skill"], action, source, by, note)


def audit_body(row: dict[str, Any]) -> dict[str, Any]:
    """What the audit trail keeps of a label: all of it but its time (the audit record has its own)."""
    return {"label_id": row["id"], **{k: row[k] for k in COLUMNS[1:-1]}}


def insert(conn: sqlite3.Connection, audit: AuditLog, w: LabelWrite) -> dict[str, Any]:
    """Write ``w`` and its audit record; returns the stored label."""
    cur = conn.execute(
        "INSERT INTO labels(decision_id, event_id, skill, action, source, by, note, created_at) VALUES (?,?,?,?,?,?,?,?)",
        (w.decision_id, w.event_id, w.skill, w.action, w.source, w.by, w.note, w.created_at),
    )
    row = dict(zip(COLUMNS, (cur.lastrowid, w.decision_id, w.event_id, w.skill, w.action, w.source, w.by, w.note, w.created_at),
                   strict=True))
    audit.append(conn, "label", w.decision_id, audit_body(row), ts=w.created_at)
    return row


def _present(conn: sqlite3.Connection) -> bool:
    """Whether the table exists (a database an older agentd wrote, opened read-only, has none)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'labels'").fetchone() is not None


def for_decision(conn: sqlite3.Connection, decision_id: str) -> list[dict[str, Any]]:
    """Every label of a decision, oldest first (the last one counts)."""
    if not _present(conn):
        return []
    rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM labels WHERE decision_id = ? ORDER BY id", (decision_id,))
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


def export(conn: sqlite3.Connection, *, skill: str | None = None, since: float | None = None) -> Iterator[dict[str, Any]]:
    """The labelled decisions as `agentd eval` lines, ``{"id": event id, "skill", "data": inputs, "label"}``,
    by the time of their latest label (``since`` bounds it), oldest first."""
    if not _present(conn):
        return
    where: list[str] = ["1=1"]
    args: list[Any] = []
    if skill is not None:
        where.append("l.skill = ?")
        args.append(skill)
    if since is not None:
        where.append("l.created_at >= ?")
        args.append(since)
    sql = (f"SELECT l.event_id, l.skill, d.record, l.action FROM ({LATEST}) l JOIN decisions d ON d.id = l.decision_id"
           f" WHERE {' AND '.join(where)} ORDER BY l.id")
    for event_id, sk, record, action in conn.execute(sql, args):
        yield {"id": event_id, "skill": sk, "data": json.loads(record).get("inputs", {}), "label": action}


@dataclass(frozen=True, slots=True)
class Labelled:
    """A labelled decision, as the quality report reads it: its record, its latest label, and the
    shadow answers given on it (``stage_index, model, version, outcome, action, confidence``)."""

    record: dict[str, Any]
    label: str
    source: str
    shadows: list[dict[str, Any]]
    by: str = ""  # who gave the latest label


SHADOW_COLUMNS = ("stage_index", "model", "version", "outcome", "action", "confidence")


def labelled(conn: sqlite3.Connection, filters: DecisionFilter, *, limit: int = 50_000) -> list[Labelled]:
    """The newest ``limit`` labelled decisions that ``filters`` select (with their latest labels), oldest first."""
    if not _present(conn):
        return []
    where, args = filters.where()
    rows = conn.execute(
        f"SELECT d.id, d.record, l.action, l.source, l.by FROM (SELECT id, record, created_at FROM decisions WHERE {where}) d"
        f" JOIN ({LATEST}) l ON l.decision_id = d.id ORDER BY d.created_at DESC LIMIT ?", (*args, limit),
    ).fetchall()
    shadows: dict[str, list[dict[str, Any]]] = {}
    ids = [r[0] for r in rows]
    for k in range(0, len(ids), 500):
        chunk = ids[k : k + 500]
        for decision_id, *values in conn.execute(
            f"SELECT decision_id, {', '.join(SHADOW_COLUMNS)} FROM shadow_answers"
            f" WHERE decision_id IN ({','.join('?' * len(chunk))}) ORDER BY stage_index", chunk,
        ):
            shadows.setdefault(decision_id, []).append(dict(zip(SHADOW_COLUMNS, values, strict=True)))
    return [Labelled(json.loads(record), action, source, shadows.get(did, []), by) for did, record, action, source, by in reversed(rows)]


def verify(conn: sqlite3.Connection, *, base_ts: float = 0.0) -> str | None:
    """None when every label matches its audit record; else what differs. Labels older than a pruned
    trail's base (``base_ts``) have no audit record left and are not checked."""
    if not _present(conn):
        return None
    audited: dict[Any, dict[str, Any]] = {}
    for (body,) in conn.execute("SELECT body FROM audit WHERE kind = 'label'"):
        parsed = json.loads(body)
        audited[parsed.get("label_id")] = parsed
    for values in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM labels"):
        row = dict(zip(COLUMNS, values, strict=True))
        known = audited.get(row["id"])
        if known is None:
            if base_ts and row["created_at"] <= base_ts:
                continue
            return f"label {row['id']} of decision {row['decision_id']} has no audit record (inserted?)"
        if known != audit_body(row):
            return f"label {row['id']} of decision {row['decision_id']} was edited after its audit record"
    return None
