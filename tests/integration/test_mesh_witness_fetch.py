"""A peer that missed checkpoints fetches the ones between before it judges a new head (issue 15,
item 3), on a real broker: B is away while A signs dozens of checkpoints (more than one page of the
fetch), and B judges A's new head consistent over the checkpoints A sends it; when A's chain was
rewritten meanwhile (rolled back and grown past the witnessed head, every checkpoint signed with
A's own key), the fetched chain lacks the witnessed head and B flags A as forked, where without
the fetch it could only say "unchecked gap"."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import yaml

from agentd.trust.keys import create_key
from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc
from tests.integration.test_mesh_link import wait_connected
from tests.integration.test_mesh_peers import WARM, _config, _wait
from tests.integration.test_mesh_witness import _copy_db, _head_of, _peer


def _pair(tmp_path: Path, port: int) -> tuple[DaemonProc, DaemonProc]:
    a_dir, b_dir = tmp_path / "node-a" / "data", tmp_path / "node-b" / "data"
    key_a, _ = create_key(a_dir)
    key_b, _ = create_key(b_dir)
    a = _config(tmp_path, "node-a", port, {"peers": {"node-b": key_b.public_b64}})
    b = _config(tmp_path, "node-b", port, {"peers": {"node-a": key_a.public_b64}})
    for node in (a, b):
        cfg = yaml.safe_load(node.config_path.read_text())
        cfg["mqtt"]["digest_interval_s"] = 0.5
        cfg["state"] = {"checkpoint_every": 1}
        node.config_path.write_text(yaml.safe_dump(cfg))
    return a, b


def _decide(node: DaemonProc, prefix: str, n: int) -> None:
    for i in range(n):
        assert node.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"{prefix}-{i}"})["ok"]


def _checkpoints_above(node: DaemonProc, seq: int) -> int:
    conn = sqlite3.connect(f"file:{node.data_dir / 'agentd.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM checkpoints WHERE seq > ?", (seq,)).fetchone()[0])
    finally:
        conn.close()


def _counter(node: DaemonProc, name: str) -> int:
    return int(node.request({"op": "status"})["result"]["broker"].get(name, 0))


def test_a_peer_back_from_a_long_absence_fetches_the_missed_checkpoints_and_judges_the_head(tmp_path: Path) -> None:
    broker = Broker(folder=tmp_path)  # no persistence: a restart forgets B's session and what it queued
    broker.start()
    a, b = _pair(tmp_path, broker.port)
    try:
        b.start()
        wait_connected(b)
        a.start()
        wait_connected(a)
        _decide(a, "before", 3)
        _wait(lambda: (_peer(b, "node-a").get("audit_head") or 0) >= 3)
        witnessed = _peer(b, "node-a")["audit_head"]
        assert b.stop() == 0
        broker.stop()  # A goes on deciding with no broker: it publishes nothing until it reconnects
        _decide(a, "away", 90)
        assert a.stop() == 0
        assert _checkpoints_above(a, witnessed) > 32 + 4  # more than one page of the fetch and the chain a head carries
        newest = _head_of(a)
        broker.start()
        b.start()
        wait_connected(b)
        a.start()
        wait_connected(a)
        _wait(lambda: _peer(b, "node-a").get("audit_head", 0) >= newest)
        seen = _peer(b, "node-a")
        assert seen["audit_state"] == "consistent", seen  # without the fetch: "unchecked gap"
        assert _counter(b, "checkpoint_fetches") >= 2  # two pages at least
        assert _counter(a, "checkpoint_answers") >= 2
        assert "peer_audit_flagged" not in b.log()
    finally:
        a.stop()
        b.stop()
        broker.stop()


def test_a_peer_flags_a_node_whose_chain_was_rewritten_past_the_witnessed_head(tmp_path: Path) -> None:
    broker = Broker(folder=tmp_path)
    broker.start()
    a, b = _pair(tmp_path, broker.port)
    a_dir = a.data_dir
    try:
        b.start()
        wait_connected(b)
        a.start()
        wait_connected(a)
        _decide(a, "old", 2)
        assert a.stop() == 0
        _copy_db(a_dir, tmp_path / "old-copy")
        a.start()
        wait_connected(a)
        _decide(a, "genuine", 10)
        newest = _head_of_running(a)
        _wait(lambda: (_peer(b, "node-a").get("audit_head") or 0) >= newest)
        witnessed = _peer(b, "node-a")["audit_head"]
        assert b.stop() == 0
        assert a.stop() == 0
        broker.stop()
        _copy_db(tmp_path / "old-copy", a_dir)  # the rewrite: back to the old copy, then other records past the witnessed head
        a.start()
        _decide(a, "rewritten", 60)
        assert a.stop() == 0
        assert _head_of(a) > witnessed
        broker.start()
        b.start()
        wait_connected(b)
        a.start()
        wait_connected(a)
        _wait(lambda: _peer(b, "node-a").get("audit_state") == "forked")
        assert _peer(b, "node-a")["audit_head"] == witnessed  # the witnessed head is kept as the evidence
        assert _counter(b, "checkpoint_fetches") >= 1
    finally:
        a.stop()
        b.stop()
        broker.stop()


def _head_of_running(node: DaemonProc) -> int:
    """The newest checkpoint of a running node (read-only, beside the writer)."""
    conn = sqlite3.connect(f"file:{node.data_dir / 'agentd.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT MAX(seq) FROM checkpoints").fetchone()[0])
    finally:
        conn.close()
