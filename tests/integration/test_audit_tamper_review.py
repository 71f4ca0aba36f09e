"""Issue 15 (review): tampering the review found beyond the table's rows, through the real CLI.

An attacker with write access to ``agentd.db`` and no node key rewrites the whole chain, deletes
every checkpoint and then makes the database look as if no agentd since issue 15 had written it
(the schema version and the checkpoints table of before): the node, at its next start, must not
bless the rewritten history with an ``audit_upgrade`` and a checkpoint signed by its own key.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from agentd.trust.audit import record_hash
from agentd.trust.checkpoints import GENESIS
from tests.integration.conftest import cli
from tests.integration.test_audit_tamper import EVENTS, copy_of, edit_decision, make_node, verify


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node that signs every 4 records (start, 12 decisions, a clean stop)."""
    return make_node(tmp_path_factory.mktemp("busy"), {"checkpoint_every": 4})


def rewrite_without(conn: sqlite3.Connection, kinds: tuple[str, ...]) -> None:
    """Drop the records of ``kinds`` (the sealed ones that would need a checkpoint), renumber and rehash all."""
    rows = conn.execute("SELECT ts, kind, ref, body FROM audit ORDER BY seq").fetchall()
    conn.execute("DELETE FROM audit")
    prev = GENESIS
    for seq, (ts, kind, ref, body) in enumerate((r for r in rows if r[1] not in kinds), start=1):
        h = record_hash(prev, seq, ts, kind, ref, body)
        conn.execute("INSERT INTO audit(seq, ts, kind, ref, body, prev_hash, hash) VALUES (?,?,?,?,?,?,?)",
                     (seq, ts, kind, ref, body, prev, h))
        prev = h


def look_legacy(conn: sqlite3.Connection) -> None:
    """Make the schema what agentd before issue 15 left (version 5: no chained checkpoints, no witness table)."""
    conn.execute("DELETE FROM checkpoints")
    for column in ("v", "count", "prev", "every", "interval_s"):
        conn.execute(f"ALTER TABLE checkpoints DROP COLUMN {column}")
    conn.execute("DROP TABLE witness")
    conn.execute("PRAGMA user_version = 5")


def test_a_rewritten_chain_made_to_look_legacy_is_not_upgraded_into_a_signed_one(busy: Path, tmp_path: Path) -> None:
    config = copy_of(busy, tmp_path)
    conn = sqlite3.connect(config.parent / "data" / "agentd.db", isolation_level=None)
    seq, ref = conn.execute("SELECT seq, ref FROM audit WHERE kind = 'decision' AND seq >= 7 ORDER BY seq LIMIT 1").fetchone()
    edit_decision(conn, seq, ref)
    rewrite_without(conn, ("stop", "audit_gap", "audit_upgrade", "retention", "key_rotation"))
    look_legacy(conn)
    records = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    conn.close()
    assert records > 4  # longer than the tail bound: no checkpoint ever covered it, or they were deleted
    # The node starts on it (here `agentd decide`, which opens the store as the daemon does).
    r = cli(config, "decide", "freezer_health", "--data", json.dumps(EVENTS[0]), "--id", "after")
    assert r.returncode == 0, r.stderr
    rc, result = verify(config)
    assert rc == 1, result
    assert "at start the node found its checkpoints missing" in result["problem"], result
