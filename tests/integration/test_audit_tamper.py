"""Issue 15's tampering table, rows 1, 3, 4, 5 and 6, through the real CLI on a real agentd.db.

Each node here ran the real daemon (start, decisions over its socket, a clean stop). The
attacker then edits ``agentd.db`` with plain SQL, recomputing hashes where the row says so
(the algorithm is public; only the node key is secret), and `agentd audit verify` must exit 1
with the reason. Row 2 (a truncated tail) needs the peers' witnessed heads: not node-local
(tests/integration/test_audit_fleet.py, `agentd audit verify --fleet`).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.trust.audit import record_hash
from agentd.trust.canonical import canonical, sha256_hex
from agentd.trust.checkpoints import GENESIS, Bound, make_checkpoint
from agentd.trust.keys import create_key_file
from tests.integration.conftest import DaemonProc, cli, freezer_config

EVENTS = [
    {"temperature_c": -20.0, "door_open_s": 2.0, "compressor_a": 5.0},
    {"temperature_c": -13.0, "door_open_s": 400.0, "compressor_a": 6.6},
    {"temperature_c": -15.0, "door_open_s": 0.0, "compressor_a": 9.0},
]


def make_node(root: Path, state: dict[str, Any]) -> Path:
    """A config under ``root`` whose node ran: start, 12 decisions over the socket, a clean stop."""
    data = root / "data"
    data.mkdir(parents=True)
    config = root / "agentd.yaml"
    config.write_text(yaml.safe_dump({**freezer_config(data), "state": state}))
    run(config, [f"e{i}" for i in range(12)])
    return config


def run(config: Path, event_ids: list[str]) -> None:
    node = DaemonProc(config_path=config, data_dir=config.parent / "data")
    node.start()
    try:
        for i, event_id in enumerate(event_ids):
            reply = node.request({"op": "submit", "skill": "freezer_health", "data": EVENTS[i % len(EVENTS)], "id": event_id})
            assert reply["ok"], reply
    finally:
        assert node.stop() == 0


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node that signs every 4 records: its history is longer than its tail bound."""
    return make_node(tmp_path_factory.mktemp("busy"), {"checkpoint_every": 4})


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node with the default bound (1000 records / 300 s): its whole history fits in it."""
    return make_node(tmp_path_factory.mktemp("quiet"), {})


def copy_of(config: Path, tmp_path: Path) -> Path:
    """A fresh copy of a node (config, database, keys) for one attack."""
    shutil.copytree(config.parent / "data", tmp_path / "data", ignore=shutil.ignore_patterns("*.sock", "*.log"))
    cfg = yaml.safe_load(config.read_text())
    cfg["node"]["data_dir"] = str(tmp_path / "data")
    out = tmp_path / "agentd.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


@pytest.fixture
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    config = copy_of(request.getfixturevalue(request.param), tmp_path)
    conn = sqlite3.connect(config.parent / "data" / "agentd.db", isolation_level=None)
    assert cli(config, "audit", "verify").returncode == 0
    yield config, conn
    conn.close()


def verify(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = cli(config, "audit", "verify", "--json", *args)
    assert not r.stderr or r.returncode != 0, r.stderr
    return r.returncode, json.loads(r.stdout) if r.stdout else {"problem": r.stderr}


# -- what the attacker does: plain SQL, and SHA-256 where the row says the hashes are recomputed


def decision_at_or_after(conn: sqlite3.Connection, seq: int) -> tuple[int, str]:
    return conn.execute("SELECT seq, ref FROM audit WHERE kind = 'decision' AND seq >= ? ORDER BY seq LIMIT 1", (seq,)).fetchone()


def edit_decision(conn: sqlite3.Connection, seq: int, ref: str) -> None:
    """Make decision ``ref`` say 'none' in its table row and in its audit record at ``seq``."""
    record = json.loads(conn.execute("SELECT record FROM decisions WHERE id = ?", (ref,)).fetchone()[0])
    record["action"] = "none"
    conn.execute("UPDATE decisions SET record = ?, action = 'none' WHERE id = ?", (canonical(record).decode(), ref))
    body = json.loads(conn.execute("SELECT body FROM audit WHERE seq = ?", (seq,)).fetchone()[0])
    body.update(action="none", record_sha256=sha256_hex(canonical(record)))
    conn.execute("UPDATE audit SET body = ? WHERE seq = ?", (canonical(body).decode(), seq))


def rehash_from(conn: sqlite3.Connection, seq: int) -> None:
    prev = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq - 1,)).fetchone()
    prev_hash = prev[0] if prev else GENESIS
    for s, ts, kind, ref, body in conn.execute("SELECT seq, ts, kind, ref, body FROM audit WHERE seq >= ? ORDER BY seq", (seq,)).fetchall():
        h = record_hash(prev_hash, s, ts, kind, ref, body)
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev_hash, h, s))
        prev_hash = h


# -- row 1: edit decision 7, recompute the hashes from 7 on, delete the checkpoints at or above 7


@pytest.mark.parametrize("db", ["busy"], indirect=True)
def test_row_1_a_rewritten_tail_outgrows_its_signed_bound(db: tuple[Path, sqlite3.Connection]) -> None:
    config, conn = db
    seq, ref = decision_at_or_after(conn, 7)
    edit_decision(conn, seq, ref)
    rehash_from(conn, seq)
    conn.execute("DELETE FROM checkpoints WHERE seq >= ?", (seq,))
    rc, result = verify(config)
    assert rc == 1
    assert "under no signature, beyond the bound of 4 records / 300 s (checkpoints deleted?)" in result["problem"]


@pytest.mark.parametrize("db", ["quiet"], indirect=True)
def test_row_1_on_a_quiet_node_the_clean_stop_lacks_its_checkpoint(db: tuple[Path, sqlite3.Connection]) -> None:
    config, conn = db
    seq, ref = decision_at_or_after(conn, 7)
    edit_decision(conn, seq, ref)
    rehash_from(conn, seq)
    conn.execute("DELETE FROM checkpoints WHERE seq >= ?", (seq,))
    rc, result = verify(config)
    stop = conn.execute("SELECT MAX(seq) FROM audit WHERE kind = 'stop'").fetchone()[0]
    assert rc == 1 and result["first_bad_seq"] == stop
    assert f"record {stop} (stop) has no signed checkpoint at it" in result["problem"]


# -- row 3: rewrite the whole chain and delete every checkpoint


@pytest.mark.parametrize("db", ["busy", "quiet"], indirect=True)
def test_row_3_a_whole_chain_rewritten_without_checkpoints(db: tuple[Path, sqlite3.Connection]) -> None:
    config, conn = db
    seq, ref = decision_at_or_after(conn, 1)
    edit_decision(conn, seq, ref)
    rehash_from(conn, 1)
    conn.execute("DELETE FROM checkpoints")
    rc, result = verify(config)
    assert rc == 1 and result["checkpoints"] == 0
    assert "no signed checkpoint at it" in result["problem"] or "under no signature, beyond the bound" in result["problem"]
    # The node then starts on the rewritten chain and signs its head: verify still fails.
    r = cli(config, "decide", "freezer_health", "--data", json.dumps(EVENTS[0]), "--id", "after")
    assert r.returncode == 0, r.stderr
    rc, result = verify(config)
    assert rc == 1
    assert "found its checkpoints missing" in result["problem"] or "(stop) has no signed checkpoint" in result["problem"]


# -- row 4: delete the oldest records up to a genuine checkpoint and set settings.audit_base to it


@pytest.mark.parametrize("db", ["busy"], indirect=True)
def test_row_4_a_base_no_retention_record_binds(db: tuple[Path, sqlite3.Connection]) -> None:
    config, conn = db
    cut, h = conn.execute("SELECT seq, hash FROM checkpoints ORDER BY seq LIMIT 1 OFFSET 2").fetchone()
    gone = [r for (r,) in conn.execute("SELECT ref FROM audit WHERE kind = 'decision' AND seq <= ?", (cut,))]
    conn.execute("DELETE FROM audit WHERE seq <= ?", (cut,))
    conn.execute("DELETE FROM checkpoints WHERE seq < ?", (cut,))
    conn.execute("INSERT OR REPLACE INTO settings(key, value) VALUES ('audit_base', ?)", (json.dumps({"seq": cut, "hash": h}),))
    for ref in gone:
        conn.execute("DELETE FROM fleet_decisions WHERE decision_id = ?", (ref,))
        conn.execute("DELETE FROM decisions WHERE id = ?", (ref,))
    rc, result = verify(config)
    assert rc == 1 and result["first_bad_seq"] == cut
    assert f"the chain starts after record {cut}, but no signed retention record binds that start" in result["problem"]


# -- row 5: after an audit prune (export --mark, retention), edit an old decision, insert a back-dated one


@pytest.fixture(scope="module")
def pruned(busy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The busy node, exported with --mark, then run with a retention that prunes every decision
    then made (and the audit trail up to the export), then 4 more decisions. Returns (config, export)."""
    root = tmp_path_factory.mktemp("pruned")
    config = copy_of(busy, root)
    export = root / "export.jsonl"
    assert cli(config, "audit", "export", "--mark", "-o", str(export)).returncode == 0
    cfg = yaml.safe_load(config.read_text())
    cfg["state"]["retention"] = {"max_age_days": 1e-5, "min_keep_hours": 0}  # under a second
    config.write_text(yaml.safe_dump(cfg))
    node = DaemonProc(config_path=config, data_dir=root / "data")
    node.start()
    try:
        db = sqlite3.connect(f"file:{root / 'data' / 'agentd.db'}?mode=ro", uri=True)
        for _ in range(600):  # housekeeping applies retention 5 s after the start
            if db.execute("SELECT 1 FROM audit WHERE kind = 'retention'").fetchone():
                break
            time.sleep(0.1)
        db.close()
        for i in range(4):
            assert node.request({"op": "submit", "skill": "freezer_health", "data": EVENTS[0], "id": f"late{i}"})["ok"]
    finally:
        assert node.stop() == 0
    return config, export


def test_row_5_the_pruned_node_and_its_export_verify_as_one_chain(pruned: tuple[Path, Path], tmp_path: Path) -> None:
    config, export = pruned
    base = json.loads(sqlite3.connect(config.parent / "data" / "agentd.db").execute(
        "SELECT value FROM settings WHERE key = 'audit_base'").fetchone()[0])
    assert base["seq"] > 0  # the audit trail was pruned
    assert verify(config)[0] == 0
    assert verify(config, "--export", str(export), "--with-database")[0] == 0
    pin = config.parent / "data" / "keys" / "node.pub"
    rc, result = verify(config, "--export", str(export), "--public-key", str(pin))
    assert rc == 0 and result["tail"]["records"] == 0
    forged = tmp_path / "forged.jsonl"
    forged.write_text(export.read_text().replace('"action":"alert"', '"action":"none"', 1))
    rc, result = verify(config, "--export", str(forged), "--public-key", str(pin))
    assert rc == 1 and "was edited" in result["problem"]


@pytest.mark.parametrize("attack", ["edit", "insert", "move_base"])
def test_row_5_tampering_after_a_prune(pruned: tuple[Path, Path], tmp_path: Path, attack: str) -> None:
    config = copy_of(pruned[0], tmp_path)
    conn = sqlite3.connect(config.parent / "data" / "agentd.db", isolation_level=None)
    base = json.loads(conn.execute("SELECT value FROM settings WHERE key = 'audit_base'").fetchone()[0])
    base_ts = conn.execute("SELECT ts FROM checkpoints WHERE seq = ?", (base["seq"],)).fetchone()[0]
    if attack == "edit":
        ref = conn.execute("SELECT id FROM decisions ORDER BY created_at LIMIT 1").fetchone()[0]
        conn.execute("UPDATE decisions SET created_at = ?, action = 'none', record = json_set(record, '$.action', 'none',"
                     " '$.created_at', ?) WHERE id = ?", (base_ts - 60, base_ts - 60, ref))
        expected = (f"decision {ref} was edited",)
    elif attack == "insert":
        rec = json.loads(conn.execute("SELECT record FROM decisions LIMIT 1").fetchone()[0])
        rec.update(id="forged", event_id="e-forged", action="none", created_at=base_ts - 3600)
        conn.execute("INSERT INTO events(id, skill, received_at, data) VALUES ('e-forged', 'freezer_health', ?, '{}')", (base_ts - 3600,))
        conn.execute("INSERT INTO decisions(id, event_id, skill, action, status, source, stage, release, created_at, record)"
                     " VALUES ('forged', 'e-forged', 'freezer_health', 'none', ?, ?, 'canary', 'it-1', ?, ?)",
                     (rec["status"], rec["source"], base_ts - 3600, json.dumps(rec)))
        expected = ("decision forged has no audit record (inserted?)",)
    else:  # row 4 after a genuine prune: cut on to a later genuine checkpoint
        cut, h = conn.execute("SELECT seq, hash FROM checkpoints WHERE seq > ? ORDER BY seq LIMIT 1", (base["seq"],)).fetchone()
        conn.execute("DELETE FROM audit WHERE seq <= ?", (cut,))
        conn.execute("DELETE FROM checkpoints WHERE seq < ?", (cut,))
        conn.execute("UPDATE settings SET value = ? WHERE key = 'audit_base'", (json.dumps({"seq": cut, "hash": h}),))
        # (the cut may take the retention record with it: then no retention record binds the start at all)
        expected = (f"pruned only up to record {base['seq']}", "no signed retention record binds that start")
    conn.close()
    rc, result = verify(config)
    assert rc == 1 and any(e in result["problem"] for e in expected), result


# -- row 6: rewrite, re-sign the checkpoints with a foreign key, verify where keys/node.key is unreadable


def resign_all(conn: sqlite3.Connection, key_dir: Path) -> str:
    """Replace every checkpoint by one signed with a key of the attacker's, chained like the node's."""
    intruder = create_key_file(key_dir / "intruder.key")[0]
    old = conn.execute("SELECT seq, hash, ts, node FROM checkpoints ORDER BY seq").fetchall()
    conn.execute("DELETE FROM checkpoints")
    prev = GENESIS
    for seq, _, ts, node in old:
        h = conn.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()[0]
        cp = make_checkpoint(intruder, node=node, seq=seq, hash_=h, ts=ts, prev=prev, bound=Bound(4, 300.0))
        conn.execute("INSERT INTO checkpoints(seq, hash, ts, node, public_key, sig, v, count, prev, every, interval_s)"
                     " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                     (cp.seq, cp.hash, cp.ts, cp.node, cp.public_key, cp.sig, cp.v, cp.count, cp.prev, cp.every, cp.interval_s))
        prev = cp.digest
    return intruder.public_b64


@pytest.mark.parametrize("db", ["busy"], indirect=True)
def test_row_6_checkpoints_re_signed_with_a_foreign_key(db: tuple[Path, sqlite3.Connection], tmp_path: Path) -> None:
    config, conn = db
    data = config.parent / "data"
    real = (data / "keys" / "node.pub").read_text().strip()
    seq, ref = decision_at_or_after(conn, 1)
    edit_decision(conn, seq, ref)
    rehash_from(conn, 1)
    intruder = resign_all(conn, tmp_path / "attacker")
    (data / "keys" / "node.key").unlink()  # unreadable: verify never needed it
    rc, result = verify(config)
    assert rc == 1 and "signed by an unknown key" in result["problem"] and "the pinned key" in result["problem"]
    # With the pin gone too, verify refuses to go on rather than trust the database's key.
    (data / "keys" / "node.pub").unlink()
    r = cli(config, "audit", "verify")
    assert r.returncode == 1 and "no public key to verify the audit trail against" in r.stderr
    # The service user can write keys/: a pin in the (root-owned) config is the one it cannot replace.
    (data / "keys" / "node.pub").write_text(intruder + "\n")
    assert verify(config)[0] == 0  # the attacker's own pin: what trust.audit_public_key is for
    cfg = yaml.safe_load(config.read_text())
    cfg["trust"] = {"audit_public_key": real}
    config.write_text(yaml.safe_dump(cfg))
    rc, result = verify(config)
    assert rc == 1 and "signed by an unknown key" in result["problem"]
    assert verify(config, "--public-key", real)[0] == 1
