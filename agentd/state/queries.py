"""Read queries over the store, shared by the daemon and the read-only CLI commands."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.errors import NotFound, StateError
from agentd.state import fleet_state
from agentd.state.witness import list_witness
from agentd.trust.audit import AuditRow, VerifyResult
from agentd.trust.canonical import canonical, sha256_hex

if TYPE_CHECKING:
    from agentd.state.lww import Entry

DB_FILE = "agentd.db"


def db_path(data_dir: Path) -> Path:
    return data_dir / DB_FILE


def open_readonly(data_dir: Path) -> sqlite3.Connection:
    """A read-only connection; works while the daemon runs (WAL) or is stopped."""
    path = db_path(data_dir)
    if not path.exists():
        raise NotFound(f"{path}: no database yet; start the daemon or run `agentd decide` once")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        conn.execute("SELECT 1 FROM decisions LIMIT 1")
    except sqlite3.Error as exc:
        raise StateError(f"{path}: cannot open database: {exc}") from exc
    return conn


def record_digest(record: dict[str, Any]) -> str:
    """The SHA-256 of a decision record's canonical JSON, as kept in the audit trail."""
    return sha256_hex(canonical(record))


def _decision(row: tuple[str, str | None]) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(row[0])
    if row[1] is not None:
        record["late_answer"] = json.loads(row[1])
    return record


def get_decision(conn: sqlite3.Connection, ident: str) -> dict[str, Any]:
    """A decision by its id or its event id."""
    row = conn.execute(
        "SELECT record, late_answer FROM decisions WHERE id = ? OR event_id = ? LIMIT 1", (ident, ident)
    ).fetchone()
    if row is None:
        raise NotFound(f"no decision with id or event id {ident!r}")
    return _decision(row)


def decisions_by_ids(conn: sqlite3.Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The decisions with these ids (never event ids), by id; an unknown id is left out."""
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):  # under SQLite's limit on bound parameters
        part = ids[start:start + 500]
        marks = ",".join("?" * len(part))
        for ident, record, late in conn.execute(f"SELECT id, record, late_answer FROM decisions WHERE id IN ({marks})", part):
            out[ident] = _decision((record, late))
    return out


MIN_ID_PREFIX = 8


def decision_by_id(conn: sqlite3.Connection, ident: str) -> dict[str, Any]:
    """A decision by its id, or by a unique prefix of at least MIN_ID_PREFIX characters of it; never by an event id.

    What an approval or a rejection names: event ids come from outside, so an event whose id
    equals a decision's short form must never be what a person approves.
    """
    row = conn.execute("SELECT record, late_answer FROM decisions WHERE id = ?", (ident,)).fetchone()
    if row is not None:
        return _decision(row)
    if len(ident) < MIN_ID_PREFIX:
        raise NotFound(f"no decision with id {ident!r} (a short id needs at least {MIN_ID_PREFIX} characters)")
    escaped = ident.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = conn.execute("SELECT record, late_answer FROM decisions WHERE id LIKE ? ESCAPE '\\' LIMIT 2", (escaped + "%",)).fetchall()
    if not rows:
        raise NotFound(f"no decision with id {ident!r}")
    if len(rows) > 1:
        raise NotFound(f"{ident!r} is the start of more than one decision id: give more of it")
    return _decision(rows[0])


def find_by_event(conn: sqlite3.Connection, event_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT record, late_answer FROM decisions WHERE event_id = ?", (event_id,)).fetchone()
    return None if row is None else _decision(row)


@dataclass(frozen=True, slots=True)
class DecisionFilter:
    """Which decisions a read covers: every field that is set must match (``since`` bounds ``created_at``)."""

    skill: str | None = None
    source: str | None = None
    stage: str | None = None
    release: str | None = None
    status: str | None = None
    since: float | None = None

    def where(self, *, stage_column: str = "stage") -> tuple[str, list[Any]]:
        """The SQL condition (``"1=1"`` when nothing is set) and its arguments.

        ``stage_column`` names the lifecycle stage column of a table other than ``decisions``.
        """
        equal = (("skill", self.skill), ("source", self.source), (stage_column, self.stage),
                 ("release", self.release), ("status", self.status))
        where = [f"{column} = ?" for column, value in equal if value is not None]
        args: list[Any] = [value for _, value in equal if value is not None]
        if self.since is not None:
            where.append("created_at >= ?")
            args.append(self.since)
        return " AND ".join(where) or "1=1", args


def list_decisions(conn: sqlite3.Connection, filters: DecisionFilter | None = None, *, limit: int = 20) -> list[dict[str, Any]]:
    """The newest decisions, filtered."""
    where, args = (filters or DecisionFilter()).where()
    sql = f"SELECT record, late_answer FROM decisions WHERE {where} ORDER BY created_at DESC, rowid DESC LIMIT ?"
    return [_decision(r) for r in conn.execute(sql, (*args, max(1, min(limit, 10_000))))]


def audit_for(conn: sqlite3.Connection, ref: str) -> list[dict[str, Any]]:
    """Audit records that refer to a decision."""
    rows = conn.execute("SELECT seq, ts, kind, body, hash FROM audit WHERE ref = ? ORDER BY seq", (ref,))
    return [{"seq": s, "ts": ts, "kind": k, "body": json.loads(b), "hash": h} for s, ts, k, b, h in rows]


def pending_approvals(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    cols = ("decision_id", "skill", "requested_action", "interim_action", "status", "created_at", "expires_at")
    rows = conn.execute(
        f"SELECT {', '.join(cols)} FROM approvals WHERE status = 'pending' ORDER BY expires_at"
    ).fetchall()
    return [dict(zip(cols, r, strict=True)) for r in rows]


def get_setting(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def counts(conn: sqlite3.Connection, since: float | None = None) -> dict[str, Any]:
    """Totals for `agentd status`: decisions, by source, fallback rate, outbox depth."""
    cond, args = ("WHERE created_at >= ?", (since,)) if since is not None else ("", ())
    by_source = dict(conn.execute(f"SELECT source, COUNT(*) FROM decisions {cond} GROUP BY source", args).fetchall())
    total = sum(by_source.values())
    fallbacks = conn.execute(
        f"SELECT COUNT(*) FROM decisions {cond} {'AND' if cond else 'WHERE'} fallback_reason IS NOT NULL", args
    ).fetchone()[0]
    return {
        "decisions": total,
        "by_source": by_source,
        "fallback_rate": round(fallbacks / total, 4) if total else 0.0,
        "outbox_depth": conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0],
        "pending_approvals": conn.execute("SELECT COUNT(*) FROM approvals WHERE status = 'pending'").fetchone()[0],
        "audit_records": conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0],
    }


def iter_audit(conn: sqlite3.Connection, after: int = 0) -> Iterator[AuditRow]:
    for row in conn.execute(
        "SELECT seq, ts, kind, ref, body, prev_hash, hash FROM audit WHERE seq > ? ORDER BY rowid", (after,)
    ):
        yield AuditRow(*row)


def verify_audit(conn: sqlite3.Connection, **kw: Any) -> VerifyResult:
    """Verify the audit trail and the tables against it: ``agentd.state.audit_check.verify_audit``."""
    from agentd.state import audit_check  # it reads through this module: imported on use, not at load

    return audit_check.verify_audit(conn, **kw)


def list_peers(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Peers this node has heard from: presence, last seen, decisions received, the audit head witnessed."""
    cols = ("node", "status", "last_seen", "last_hlc", "decisions", "learned", "public_key")
    heads = list_witness(conn)
    none = dict.fromkeys(("audit_head", "audit_hash", "witnessed_at", "audit_state", "audit_detail", "seen_seq", "seen_at", "audit_anchor"))
    return [{**dict(zip(cols, r, strict=True)), **heads.get(r[0], none)}
            for r in conn.execute(f"SELECT {', '.join(cols)} FROM peers ORDER BY node")]


def fleet_digest(conn: sqlite3.Connection, since: float) -> dict[str, list[float]]:
    """Per origin node: [decisions known since ``since``, newest decision time]; for anti-entropy."""
    rows = conn.execute("SELECT node, COUNT(*), MAX(ts) FROM fleet_decisions WHERE ts >= ? GROUP BY node", (since,))
    return {node: [int(n), float(ts)] for node, n, ts in rows}


def own_decisions_since(conn: sqlite3.Connection, node: str, since: float, limit: int = 5000) -> list[dict[str, Any]]:
    """This node's decision records newer than ``since`` (oldest first), to send a peer that missed them."""
    ids = [r[0] for r in conn.execute(
        "SELECT decision_id FROM fleet_decisions WHERE node = ? AND ts > ? ORDER BY ts LIMIT ?", (node, since, limit)
    )]
    out = []
    for decision_id in ids:
        row = conn.execute("SELECT record FROM decisions WHERE id = ?", (decision_id,)).fetchone()
        if row is not None:
            out.append(json.loads(row[0]))
    return out


def fleet_summary(conn: sqlite3.Connection, window_s: float = 600.0, now: float | None = None) -> dict[str, Any]:
    """Decisions per node and action in the last ``window_s`` seconds, and the fleet-state map."""
    since = (now if now is not None else time.time()) - window_s
    rows = conn.execute(
        "SELECT node, action, COUNT(*) FROM fleet_decisions WHERE ts >= ? GROUP BY node, action ORDER BY node, action", (since,)
    ).fetchall()
    by_node: dict[str, dict[str, int]] = {}
    for node, action, n in rows:
        by_node.setdefault(node, {})[action] = n
    at = now if now is not None else time.time()
    state = {e.key: e.as_json(at) for e in fleet_state.entries(conn)}
    return {"window_s": window_s, "decisions": by_node, "state": state}


def export_audit(conn: sqlite3.Connection, after: int = 0) -> Iterator[dict[str, Any]]:
    """Audit records as dicts, for JSON lines export."""
    for row in iter_audit(conn, after):
        yield {
            "seq": row.seq,
            "ts": row.ts,
            "kind": row.kind,
            "ref": row.ref,
            "body": json.loads(row.body),
            "prev_hash": row.prev_hash,
            "hash": row.hash,
        }


def engine_state(conn: sqlite3.Connection) -> tuple[list[tuple[str, float]], dict[str, str | None], list[Entry]]:
    """What an engine starts from: the fleet decisions of the last 24 h, the persisted settings
    (mode, lifecycle stage, model activations), and the fleet-state map."""
    cutoff = time.time() - 24 * 3600
    rows = conn.execute("SELECT action, ts FROM fleet_decisions WHERE ts >= ? ORDER BY ts", (cutoff,)).fetchall()
    values = fleet_state.entries(conn)
    keys = ("mode", "mode_config", "stage", "stage_config", "active_models")
    return rows, {k: get_setting(conn, k) for k in keys}, values
