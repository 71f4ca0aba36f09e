"""What this node keeps of its peers: their decisions (the fleet state) and their presence.

Functions here run on the store's writer thread inside its transaction.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Any

from agentd.state.decisions import FLEET_INSERT

if TYPE_CHECKING:
    from agentd.state.audit_log import AuditLog


def record_decision(conn: sqlite3.Connection, node: str, body: dict[str, Any], hlc: str) -> bool:
    """Keep a peer's decision and count it on the peer; False when it was already known."""
    fresh = conn.execute(
        FLEET_INSERT, (node, str(body["id"]), str(body.get("skill", "")), str(body["action"]), float(body["created_at"]), hlc)
    ).rowcount == 1
    conn.execute(
        "INSERT INTO peers(node, status, last_seen, last_hlc, decisions) VALUES (?, 'online', ?, ?, ?)"
        " ON CONFLICT(node) DO UPDATE SET last_seen = excluded.last_seen, last_hlc = excluded.last_hlc,"
        " decisions = decisions + excluded.decisions",
        (node, time.time(), hlc, int(fresh)),
    )
    return fresh


def upsert(
    conn: sqlite3.Connection, audit: AuditLog, node: str, *, status: str, hlc: str, public_key: str | None, learned: bool
) -> None:
    """Record a peer's presence; a key learned on first use is kept and audited."""
    conn.execute(
        "INSERT INTO peers(node, public_key, learned, status, last_seen, last_hlc) VALUES (?,?,?,?,?,?)"
        " ON CONFLICT(node) DO UPDATE SET status = excluded.status, last_seen = excluded.last_seen,"
        " last_hlc = excluded.last_hlc, public_key = COALESCE(peers.public_key, excluded.public_key),"
        " learned = MAX(peers.learned, excluded.learned)",
        (node, public_key, int(learned), status, time.time(), hlc),
    )
    if learned:
        audit.append(conn, "peer_learned", node, {"node": node, "public_key": public_key})
