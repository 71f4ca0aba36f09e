"""Peers witness each other's audit heads (issue 15, item 3) on real brokers: node B keeps node A's
signed heads, A's database is rolled back to an older copy while it is stopped, and B flags A;
also when the rollback happens on the other side of a partition and B sees it after the heal."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import yaml

from agentd.trust.keys import create_key
from tests.integration.broker import Broker, free_port
from tests.integration.conftest import DaemonProc, cli
from tests.integration.test_mesh_link import wait_connected
from tests.integration.test_mesh_partition import QUEUE, _bridge
from tests.integration.test_mesh_peers import WARM, _config, _wait

DB_FILES = ("agentd.db", "agentd.db-wal", "agentd.db-shm")


def _peer(node: DaemonProc, name: str) -> dict[str, Any]:
    peers = {p["node"]: p for p in json.loads(cli(node.config_path, "peers", "--json").stdout)}
    return peers.get(name, {})


def witness_pair(tmp: Path, port_a: int, port_b: int | None = None, *, checkpoint_every: int) -> tuple[DaemonProc, DaemonProc]:
    """Nodes A and B (not started) that trust each other's keys, so each witnesses the other's audit heads;
    digests every 0.5 s, a checkpoint every ``checkpoint_every`` records. B on ``port_b`` if given."""
    key_a, _ = create_key(tmp / "node-a" / "data")
    key_b, _ = create_key(tmp / "node-b" / "data")
    a = _config(tmp, "node-a", port_a, {"peers": {"node-b": key_b.public_b64}})
    b = _config(tmp, "node-b", port_a if port_b is None else port_b, {"peers": {"node-a": key_a.public_b64}})
    for node in (a, b):
        cfg = yaml.safe_load(node.config_path.read_text())
        cfg["mqtt"]["digest_interval_s"] = 0.5
        cfg["state"] = {"checkpoint_every": checkpoint_every}
        node.config_path.write_text(yaml.safe_dump(cfg))
    return a, b


def _copy_db(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in DB_FILES:
        (dst / name).unlink(missing_ok=True)
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def test_a_peer_flags_a_node_whose_database_was_rolled_back(tmp_path: Path, broker: Broker) -> None:
    a, b = witness_pair(tmp_path, broker.port, checkpoint_every=5)
    a_dir = a.data_dir
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


def test_a_peer_flags_a_node_rolled_back_on_the_other_side_of_a_healed_partition(tmp_path: Path) -> None:
    """B witnesses A's heads across a bridge; while the brokers are split A's database is rolled back
    to an older copy; after the heal B sees A's lower head and flags it."""
    b1 = Broker(folder=tmp_path, extra=QUEUE)
    b1.start()
    p2 = free_port()
    b2 = Broker(folder=tmp_path, port=p2, extra=_bridge(b1.port))
    b2.start()
    a, b = witness_pair(tmp_path, b1.port, p2, checkpoint_every=5)
    a_dir = a.data_dir
    try:
        b.start()
        wait_connected(b)
        a.start()
        wait_connected(a)
        for i in range(6):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"old-{i}"})["ok"]
        _wait(lambda: (_peer(b, "node-a").get("audit_head") or 0) >= 5)
        assert a.stop() == 0
        old_head = _head_of(a)
        _copy_db(a_dir, tmp_path / "old-copy")
        a.start()
        wait_connected(a)
        for i in range(12):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"new-{i}"})["ok"]
        _wait(lambda: _peer(b, "node-a")["audit_head"] >= old_head + 10)  # witnessed across the bridge

        b2.stop()  # partition: B's broker comes back without its bridge
        b2 = Broker(folder=tmp_path, port=p2, extra=QUEUE)
        b2.start()
        wait_connected(b)
        assert a.stop() == 0
        _copy_db(tmp_path / "old-copy", a_dir)  # the rollback, on A's side of the split
        a.start()
        wait_connected(a)
        _wait(lambda: a.request({"op": "status"})["result"]["broker"].get("heads_published", 0) > 0)
        assert _peer(b, "node-a")["audit_state"] == "consistent"  # nothing crosses while split

        b2.stop()  # heal
        b2 = Broker(folder=tmp_path, port=p2, extra=_bridge(b1.port))
        b2.start()
        wait_connected(b)
        _wait(lambda: _peer(b, "node-a")["audit_state"] == "rolled back", timeout=60)
        assert _peer(b, "node-a")["seen_seq"] < _peer(b, "node-a")["audit_head"]
    finally:
        a.stop()
        b.stop()
        b1.stop()
        b2.stop()
