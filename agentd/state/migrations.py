"""Versioned schema migrations, applied at start-up (PRAGMA user_version)."""

from __future__ import annotations

import sqlite3

from agentd.errors import StateError

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        skill TEXT NOT NULL,
        received_at REAL NOT NULL,
        data TEXT NOT NULL
    );
    CREATE TABLE decisions (
        id TEXT PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE REFERENCES events(id),
        skill TEXT NOT NULL,
        action TEXT NOT NULL,
        status TEXT NOT NULL,
        source TEXT NOT NULL,
        fallback_reason TEXT,
        guard TEXT,
        stage TEXT NOT NULL,
        release TEXT NOT NULL,
        created_at REAL NOT NULL,
        record TEXT NOT NULL,
        late_answer TEXT
    );
    CREATE INDEX decisions_created ON decisions(created_at);
    CREATE INDEX decisions_skill ON decisions(skill, created_at);
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        kind TEXT NOT NULL,
        ref TEXT,
        body TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_ref ON audit(ref);
    CREATE TABLE checkpoints (
        seq INTEGER PRIMARY KEY,
        hash TEXT NOT NULL,
        ts REAL NOT NULL,
        node TEXT NOT NULL,
        public_key TEXT NOT NULL,
        sig TEXT NOT NULL
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        qos INTEGER NOT NULL,
        retain INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE approvals (
        decision_id TEXT PRIMARY KEY REFERENCES decisions(id),
        skill TEXT NOT NULL,
        requested_action TEXT NOT NULL,
        interim_action TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        resolved_at REAL,
        resolved_by TEXT,
        applied_action TEXT
    );
    CREATE INDEX approvals_status ON approvals(status, expires_at);
    CREATE TABLE fleet_decisions (
        node TEXT NOT NULL,
        decision_id TEXT NOT NULL,
        skill TEXT NOT NULL,
        action TEXT NOT NULL,
        ts REAL NOT NULL,
        hlc TEXT NOT NULL,
        PRIMARY KEY (node, decision_id)
    );
    CREATE INDEX fleet_decisions_ts ON fleet_decisions(ts);
    CREATE TABLE fleet_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        hlc TEXT NOT NULL,
        node TEXT NOT NULL
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: peers of the fleet (presence and keys learned on first use)
    """
    CREATE TABLE peers (
        node TEXT PRIMARY KEY,
        public_key TEXT,
        learned INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'unknown',
        last_seen REAL,
        last_hlc TEXT,
        decisions INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 3: fleet command nonces (a command id is accepted once)
    """
    CREATE TABLE nonces (
        id TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    );
    CREATE INDEX nonces_expiry ON nonces(expires_at);
    """,
    # 4: answers of shadow stages (recorded, never acted on; see agentd.shadow)
    """
    CREATE TABLE shadow_answers (
        decision_id TEXT NOT NULL,
        stage_index INTEGER NOT NULL,
        skill TEXT NOT NULL,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        lifecycle_stage TEXT NOT NULL,
        release TEXT NOT NULL,
        outcome TEXT NOT NULL,
        answer TEXT,
        action TEXT,
        confidence REAL,
        latency_ms REAL,
        acted_action TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (decision_id, stage_index)
    );
    CREATE INDEX shadow_answers_created ON shadow_answers(created_at);
""",
    # 5: labels: the right action for a decision, as an operator said it (issue 14; see agentd.state.labels)
    """
    CREATE TABLE labels (
        id INTEGER PRIMARY KEY,
        decision_id TEXT NOT NULL REFERENCES decisions(id),
        event_id TEXT NOT NULL,
        skill TEXT NOT NULL,
        action TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('operator', 'approval', 'rejection')),
        by TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE INDEX labels_decision ON labels(decision_id, id);
    CREATE INDEX labels_created ON labels(created_at);
""",
    # 6: chained checkpoints (issue 15; see agentd.trust.checkpoints): format version (1: legacy,
    # unchained), record count, the previous checkpoint's digest, the signed tail bound
    """
    ALTER TABLE checkpoints ADD COLUMN v INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE checkpoints ADD COLUMN count INTEGER;
    ALTER TABLE checkpoints ADD COLUMN prev TEXT;
    ALTER TABLE checkpoints ADD COLUMN every INTEGER;
    ALTER TABLE checkpoints ADD COLUMN interval_s REAL;
""",
    # 7: peers' audit heads as witnessed (issue 15, item 3; see agentd.trust.witness and agentd.state.witness):
    # per node the witnessed head (the checkpoint as sent), its state, and the newest head seen
    """
    CREATE TABLE witness (
        node TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        hash TEXT NOT NULL,
        head TEXT NOT NULL,
        witnessed_at REAL NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        seen_seq INTEGER NOT NULL,
        seen_at REAL NOT NULL
    );
""",
    # 8: the anchor of a witnessed peer (issue 15, review): the last head this node verified by its
    # links, kept as evidence once a head was taken over a gap it could not check (NULL: none such)
    """
    ALTER TABLE witness ADD COLUMN anchor TEXT;
""",
]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version; returns the version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise StateError(
            f"database schema version {current} is newer than this agentd ({len(MIGRATIONS)}); upgrade agentd"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        conn.executescript(f"BEGIN IMMEDIATE;\n{MIGRATIONS[version - 1]}\nPRAGMA user_version = {version};\nCOMMIT;")
    return len(MIGRATIONS)
