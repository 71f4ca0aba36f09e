"""What the anti-entropy digest reads (issue 16, part 4): a node's own decisions up to a time, and the
fleet-state map's winners per writer, so that a digest's answer can say exactly what a peer lacks.

Read-only functions over the store's connection (``Store.read``).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any


def own_upto(conn: sqlite3.Connection, node: str, since: float, upto: float) -> tuple[int, int, float]:
    """This node's decisions known since ``since``: (all of them, those dated at or before ``upto``, the newest time)."""
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(ts <= ?), 0), COALESCE(MAX(ts), 0) FROM fleet_decisions WHERE node = ? AND ts >= ?",
        (upto, node, since),
    ).fetchone()
    return int(row[0]), int(row[1]), float(row[2])


def writers(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Per writer, the HLCs of the keys whose winning write is theirs, sorted (entries without a
    signed write, made while MQTT was off, stay local and are left out)."""
    out: dict[str, list[str]] = {}
    for node, hlc, text in conn.execute("SELECT node, hlc, value FROM fleet_state ORDER BY node, hlc"):
        if json.loads(text)["origin"]:
            out.setdefault(node, []).append(hlc)
    return out


def origins_by(conn: sqlite3.Connection, writer: str, *, after: str = "", limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
    """``(hlc, signed write)`` of the winners by ``writer`` newer than HLC ``after``, oldest first."""
    out = []
    for hlc, text in conn.execute(
        "SELECT hlc, value FROM fleet_state WHERE node = ? AND hlc > ? ORDER BY hlc LIMIT ?", (writer, after, limit)
    ):
        origin = json.loads(text)["origin"]
        if origin:
            out.append((hlc, json.loads(origin)))
    return out
