"""Peers witness each other's audit heads (issue 15, item 3) on a real broker: node B keeps node A's
signed heads, A's database is rolled back to an older copy while it is stopped, and B flags A."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import yaml

from agentd.trust.keys import create_key
from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc, cli
from tests.integration.test_mesh_link import wait_connected
from tests.integration.test_mesh_peers import WARM, _config, _wait

DB_FILES = ("agentd.db", "agentd.db-wal", "agentd.db-shm")


def _peer(node: DaemonProc, name: str) -> dict[str, Any]:
    peers = {p["node"]: p for p in json.loads(cli(node.config_path, "peers", "--json").stdout)}
    return peers.get(name, {})


def _copy_db(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in DB_FILES:
        (dst / name).unlink(missing_ok=True)
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def test_a_peer_flags_a_node_whose_database_was_rolled_back(tmp_path: Path, broker: Broker) -> None:
    a_dir, b_dir = tmp_path / "node-a" / "data", tmp_path / "node-b" / "data"
    key_a, _ = create_key(a_dir)
    key_b, _ = create_key(b_dir)
    a = _config(tmp_path, "node-a", broker.port, {"peers": {"node-b": key_b.public_b64}})
    b = _config(tmp_path, "node-b", broker.port, {"peers": {"node-a": key_a.public_b64}})
    for node in (a, b):
        cfg = yaml.safe_load(node.config_path.read_text())
        cfg["mqtt"]["digest_interval_s"] = 0.5
        cfg["state"] = {"checkpoint_every": 5}
        node.config_path.write_text(yaml.safe_dump(cfg))
    b.start()
    wait_connected(b)
    try:
        a.start()
        wait_connected(a)
        for i in range(6):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"old-{i}"})["ok"]
        _wait(lambda: (_peer(b, "node-a").get("audit_head") or 0) >= 5)
        assert _peer(b, "node-a")["audit_state"] == "consistent"
        assert a.stop() == 0  # a clean stop signs the head (published at the next start: the link is down by then)
        old_head = _head_of(a)
        _copy_db(a_dir, tmp_path / "old-copy")

        a.start()
        wait_connected(a)
        for i in range(12):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"new-{i}"})["ok"]
        _wait(lambda: _peer(b, "node-a")["audit_head"] >= old_head + 10)
        assert _peer(b, "node-a")["audit_state"] == "consistent"  # every new head extended the one before
        assert a.stop() == 0
        newest = _peer(b, "node-a")["audit_head"]

        _copy_db(tmp_path / "old-copy", a_dir)  # the rollback: an older copy of A's database
        assert cli(a.config_path, "audit", "verify").returncode == 0  # A alone cannot tell
        a.start()
        wait_connected(a)
        _wait(lambda: _peer(b, "node-a")["audit_state"] == "rolled back")
        seen = _peer(b, "node-a")
        assert seen["audit_head"] == newest and seen["seen_seq"] < newest  # the witnessed head is kept as evidence
        assert "rolled back" in b.log() and "node-a" in b.log()
        assert b.request({"op": "status"})["result"]["broker"].get("heads_flagged", 0) >= 1
        conn = sqlite3.connect(f"file:{b.data_dir / 'agentd.db'}?mode=ro", uri=True)
        try:
            flagged = conn.execute("SELECT ref, body FROM audit WHERE kind = 'peer_audit_flagged'").fetchall()
        finally:
            conn.close()
        assert [ref for ref, _ in flagged] == ["node-a"] and json.loads(flagged[0][1])["outcome"] == "rolled_back"
        table = cli(b.config_path, "peers").stdout
        assert "rolled back" in table
        assert cli(b.config_path, "audit", "verify").returncode == 0  # the flag is part of B's own intact chain
    finally:
        a.stop()
        b.stop()


def _head_of(node: DaemonProc) -> int:
    """The seq of the newest checkpoint in a stopped node's database."""
    conn = sqlite3.connect(f"file:{node.data_dir / 'agentd.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT MAX(seq) FROM checkpoints").fetchone()[0])
    finally:
        conn.close()
