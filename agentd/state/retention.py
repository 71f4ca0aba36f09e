"""Retention (DESIGN section 5): bounded by age and size, never a pending approval, and the
audit trail only up to a signed checkpoint that an export covered and below the audit records
of every decision kept (so each kept decision stays verifiable against the chain). Functions
over a connection inside the store's transaction."""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from agentd.state import queries
from agentd.state.audit_log import read_checkpoints

log = logging.getLogger(__name__)
KEEP = "id NOT IN (SELECT decision_id FROM approvals WHERE status = 'pending')"


def prune(
    conn: sqlite3.Connection, *, cutoff: float, now: float, max_db_bytes: int, outbox_max_rows: int, min_keep_s: float
) -> tuple[dict[str, int], int, dict[str, Any] | None]:
    """Age, then size (oldest decisions first, none younger than ``min_keep_s``), then the outbox
    cap, then the exported audit trail. Returns the counts, the newest pruned decision's audit seq
    and the chain's start after it (``{seq, hash, checkpoint}``; None when the chain was never pruned)."""
    removed, pruned_seq = _delete_decisions(conn, f"created_at < ? AND {KEEP}", (cutoff,))
    size = _db_bytes(conn)
    while size > max_db_bytes:
        # never below min_keep_s: if the audit trail itself fills the cap, it needs exporting
        n, seq = _delete_decisions(
            conn,
            f"{KEEP} AND id IN (SELECT id FROM decisions WHERE created_at < ? ORDER BY created_at LIMIT 500)",
            (now - min_keep_s,),
        )
        if n == 0:
            log.warning(
                "database is %.0f MB, over retention.max_db_mb, with only recent decisions left;"
                " export the audit trail (`agentd audit export --mark`) so retention can prune it",
                size / 2**20,
            )
            break
        removed, pruned_seq = removed + n, max(pruned_seq, seq)
        size = _db_bytes(conn)
    conn.execute("DELETE FROM fleet_decisions WHERE ts < ?", (cutoff,))
    depth = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    dropped = 0
    if depth > outbox_max_rows:
        dropped = depth - outbox_max_rows
        conn.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (dropped,))
    audit_pruned = _prune_audit(conn)
    return {"decisions": removed, "outbox_dropped": dropped, "audit_pruned": audit_pruned}, pruned_seq, _base(conn)


def _delete_decisions(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> tuple[int, int]:
    """Delete decisions (with their events, approvals, labels and shadow answers); returns (count, newest audit seq among them)."""
    rows = conn.execute(f"SELECT id, event_id FROM decisions WHERE {where}", args).fetchall()
    if not rows:
        return 0, 0
    seq = 0
    for decision_id, _ in rows:
        found = conn.execute("SELECT MAX(seq) FROM audit WHERE ref = ?", (decision_id,)).fetchone()[0]
        seq = max(seq, found or 0)
    conn.executemany("DELETE FROM approvals WHERE decision_id = ?", [(r[0],) for r in rows])
    conn.executemany("DELETE FROM labels WHERE decision_id = ?", [(r[0],) for r in rows])  # export them first: `agentd label export`
    conn.executemany("DELETE FROM shadow_answers WHERE decision_id = ?", [(r[0],) for r in rows])
    conn.executemany("DELETE FROM decisions WHERE id = ?", [(r[0],) for r in rows])
    conn.executemany("DELETE FROM events WHERE id = ?", [(r[1],) for r in rows])
    return len(rows), seq


def _db_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])


def _prune_audit(conn: sqlite3.Connection) -> int:
    """Delete the audit records up to the newest checkpoint that an export covered and no kept decision needs."""
    exported = int(queries.get_setting(conn, "audit_exported_seq") or 0)
    base = json.loads(queries.get_setting(conn, "audit_base") or '{"seq": 0}')["seq"]
    if conn.execute("SELECT 1 FROM checkpoints WHERE seq > ? AND seq <= ?", (base, exported)).fetchone() is None:
        return 0  # nothing new to prune: spare the search below
    needed = conn.execute("SELECT MIN(a.seq) FROM decisions d JOIN audit a ON a.ref = d.id").fetchone()[0]
    upto = exported if needed is None else min(exported, needed - 1)
    row = conn.execute("SELECT seq, hash FROM checkpoints WHERE seq > ? AND seq <= ? ORDER BY seq DESC LIMIT 1", (base, upto)).fetchone()
    if row is None:
        return 0
    seq, h = row
    n = conn.execute("DELETE FROM audit WHERE seq <= ?", (seq,)).rowcount
    conn.execute("INSERT OR REPLACE INTO settings(key, value) VALUES ('audit_base', ?)", (json.dumps({"seq": seq, "hash": h}),))
    conn.execute("DELETE FROM checkpoints WHERE seq < ?", (seq,))
    return int(n)


def _base(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The chain's start as a retention record binds it: the base record and the digest of its checkpoint."""
    base = queries.get_setting(conn, "audit_base")
    if not base:
        return None
    b = json.loads(base)
    anchor = read_checkpoints(conn, "WHERE seq = ?", (int(b["seq"]),))
    return {"seq": int(b["seq"]), "hash": str(b["hash"]), "checkpoint": anchor[0].digest if anchor else None}
