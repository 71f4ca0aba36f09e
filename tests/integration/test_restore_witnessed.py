"""`agentd restore` asks the peers (the daemon stopped, one signed request on a real broker) for the
heads of this node they witnessed (issue 15, item 5): a backup older than the head peer B witnessed
is refused unless --force, which the signed restore record keeps with what B said; a backup that
holds the witnessed head is restored without it; with no peer answering it says so and needs --force."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.integration.broker import Broker
from tests.integration.conftest import cli
from tests.integration.test_audit_fleet import _newest_checkpoint
from tests.integration.test_mesh_link import wait_connected
from tests.integration.test_mesh_peers import WARM, _wait
from tests.integration.test_mesh_witness import _peer, witness_pair


def test_restore_refuses_a_backup_older_than_a_witnessed_head_unless_forced(tmp_path: Path, broker: Broker) -> None:
    a, b = witness_pair(tmp_path, broker.port, checkpoint_every=4)
    try:
        b.start()
        wait_connected(b)
        a.start()
        wait_connected(a)
        for i in range(3):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"old-{i}"})["ok"]
        old = tmp_path / "old-backup"
        assert cli(a.config_path, "backup", str(old)).returncode == 0
        for i in range(12):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"new-{i}"})["ok"]
        newest = _newest_checkpoint(a.data_dir)
        _wait(lambda: (_peer(b, "node-a").get("audit_head") or 0) >= newest)
        witnessed = _peer(b, "node-a")["audit_head"]
        assert a.stop() == 0
        current = tmp_path / "current-backup"
        assert cli(a.config_path, "backup", str(current)).returncode == 0
        old_head = json.loads((old / "manifest.json").read_text())["audit"]["head_seq"]
        assert old_head < witnessed

        refused = cli(a.config_path, "restore", str(old))
        assert refused.returncode == 1
        assert (f"refusing the backup: the backup's chain ends at record {old_head}, below the head at record {witnessed}"
                " witnessed by node-b") in refused.stderr and "--force" in refused.stderr
        assert _newest_checkpoint(a.data_dir) >= witnessed  # nothing was replaced

        ok = cli(a.config_path, "restore", str(current), "--json")  # holds the witnessed head: no --force needed
        assert ok.returncode == 0, ok.stderr
        fleet = json.loads(ok.stdout)["restore_record"]["fleet"]
        assert fleet["answered"] == ["node-b"] and fleet["witnessed"][0]["seq"] == witnessed and not fleet["failures"]

        forced = cli(a.config_path, "restore", str(old), "--force")
        assert forced.returncode == 0, forced.stderr
        assert "peers: 1 of 1 answered" in forced.stdout and "forced past:" in forced.stdout
        conn = sqlite3.connect(f"file:{a.data_dir / 'agentd.db'}?mode=ro", uri=True)
        try:
            body = json.loads(conn.execute("SELECT body FROM audit WHERE kind = 'restore' ORDER BY seq DESC LIMIT 1").fetchone()[0])
        finally:
            conn.close()
        assert body["forced"] is True and body["fleet"]["witnessed"][0]["peer"] == "node-b"
        assert f"below the head at record {witnessed}" in body["fleet"]["failures"][0]
        assert cli(a.config_path, "audit", "verify").returncode == 0  # the forced restore is signed history

        b.stop()  # no peer left to answer
        unanswered = cli(a.config_path, "restore", str(current), "--timeout", "1")
        assert unanswered.returncode == 1
        assert "no peer answered in 1 s (1 asked: node-b)" in unanswered.stderr and "--force" in unanswered.stderr
    finally:
        a.stop()
        b.stop()
