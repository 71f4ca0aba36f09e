"""`agentd peers clear-flag` through the real CLI (issue 15): B flags A after A is rolled back to an
older copy (real daemons, real broker); B's operator clears the flag after investigating, with B
stopped (on the database) and then, running, through the socket; the clearing is audited on B with
the caller's user and uid, B's chain still verifies, and A's next head is witnessed afresh."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from tests.integration.broker import Broker
from tests.integration.conftest import cli
from tests.integration.test_mesh_link import wait_connected
from tests.integration.test_mesh_peers import WARM, _wait
from tests.integration.test_mesh_witness import _copy_db, _peer, witness_pair


def test_an_operator_clears_a_peers_flag_after_investigating(tmp_path: Path, broker: Broker) -> None:
    a, b = witness_pair(tmp_path, broker.port, checkpoint_every=5)
    a_dir, b_dir = a.data_dir, b.data_dir
    try:
        b.start()
        wait_connected(b)
        a.start()
        wait_connected(a)
        for i in range(3):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"old-{i}"})["ok"]
        assert a.stop() == 0
        _copy_db(a_dir, tmp_path / "old-copy")
        a.start()
        wait_connected(a)
        for i in range(12):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"new-{i}"})["ok"]
        _wait(lambda: (_peer(b, "node-a").get("audit_head") or 0) >= 12)
        assert a.stop() == 0
        _copy_db(tmp_path / "old-copy", a_dir)
        a.start()
        wait_connected(a)
        _wait(lambda: _peer(b, "node-a")["audit_state"] == "rolled back")
        evidence = _peer(b, "node-a")["audit_head"]

        no_reason = cli(b.config_path, "peers", "clear-flag", "node-a")
        assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
        assert a.stop() == 0  # while B is down A publishes nothing: the flag is cleared, not re-judged, meanwhile
        assert b.stop() == 0
        cleared = cli(b.config_path, "peers", "clear-flag", "node-a", "--reason", "restored from backup after a disk failure (INC-7)",
                      "--by", "alice")
        assert cleared.returncode == 0, cleared.stderr
        assert "rolled back flag is cleared" in cleared.stdout
        assert "flag cleared" in cli(b.config_path, "peers").stdout
        assert cli(b.config_path, "audit", "verify").returncode == 0
        conn = sqlite3.connect(f"file:{b_dir / 'agentd.db'}?mode=ro", uri=True)
        try:
            ref, body = conn.execute("SELECT ref, body FROM audit WHERE kind = 'peer_flag_cleared'").fetchone()
        finally:
            conn.close()
        record = json.loads(body)
        assert ref == "node-a" and record["reason"].startswith("restored from backup")
        assert f"(uid={os.getuid()})" in record["by"] and "alice" in record["by"]
        assert record["was"]["state"] == "rolled_back" and record["was"]["witnessed"]["seq"] == evidence

        b.start()
        wait_connected(b)
        a.start()
        wait_connected(a)
        _wait(lambda: _peer(b, "node-a")["audit_state"] == "consistent")  # A's head, witnessed afresh
        assert _peer(b, "node-a")["audit_head"] < evidence
        again = cli(b.config_path, "peers", "clear-flag", "node-a", "--reason", "again")  # through the running daemon
        assert again.returncode == 1 and "is not flagged" in again.stderr
        unknown = cli(b.config_path, "peers", "clear-flag", "node-z", "--reason", "typo")
        assert unknown.returncode == 1 and "no audit head witnessed of peer 'node-z'" in unknown.stderr
        assert json.loads(cli(b.config_path, "peers", "--json").stdout)[0]["node"] == "node-a"  # the listing still works
    finally:
        a.stop()
        b.stop()
