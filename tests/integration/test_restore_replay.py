"""A restore never rolls the command nonces back: a fleet command refused as a replay before a
restore of an older backup is still refused after it (issue 15, item 5)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from agentd.control.commands import new_command
from agentd.ids import new_id
from agentd.trust.envelope import envelope
from agentd.trust.hlc import Clock
from agentd.trust.keys import create_key_file
from tests.integration.broker import Broker
from tests.integration.conftest import cli
from tests.integration.test_fleet_commands import FLEET, _node, _send, _unanswered


def test_a_replayed_command_stays_refused_after_restoring_an_older_backup(tmp_path: Path, broker: Broker) -> None:
    alice, _ = create_key_file(tmp_path / "keys" / "alice.key")
    node = _node(tmp_path, broker.port, [{"name": "alice", "key": alice.public_b64, "role": "admin"}])
    backup = tmp_path / "backup"
    try:
        made = cli(node.config_path, "backup", str(backup), "--json")
        assert made.returncode == 0, made.stderr
        command = envelope("command", fleet=FLEET, node="alice", hlc=Clock().now(), key=alice, ident=new_id(),
                           body=new_command("set_mode", target="it-node", args={"mode": "observe"}, ttl_s=600))
        [applied] = _send(node, alice, "alice", "set_mode", payload=command)
        assert applied["body"]["ok"]
        _unanswered(node, alice, "alice", "set_mode", payload=command)  # a replay: refused
        assert node.stop() == 0
        restored = cli(node.config_path, "restore", str(backup), "--json", "--force")  # no peer to ask
        assert restored.returncode == 0, restored.stderr
        assert json.loads(restored.stdout)["restore_record"]["nonces_kept"] >= 1
        node.start()
        _unanswered(node, alice, "alice", "set_mode", payload=command)  # still refused: the nonce came along
        assert node.request({"op": "status"})["result"]["mode"] == "auto"  # the backup's mode, not the replayed one
        assert cli(node.config_path, "audit", "verify").returncode == 0
    finally:
        node.stop()


def test_a_replayed_command_stays_refused_after_its_nonce_was_deleted_with_plain_sql(tmp_path: Path, broker: Broker) -> None:
    """Issue 15 (review): someone with write access to agentd.db deletes the used nonces (the node
    stopped, as for a restore); the command's audit record, under a signed checkpoint, still names it."""
    alice, _ = create_key_file(tmp_path / "keys" / "alice.key")
    node = _node(tmp_path, broker.port, [{"name": "alice", "key": alice.public_b64, "role": "admin"}])
    try:
        command = envelope("command", fleet=FLEET, node="alice", hlc=Clock().now(), key=alice, ident=new_id(),
                           body=new_command("set_mode", target="it-node", args={"mode": "observe"}, ttl_s=600))
        [applied] = _send(node, alice, "alice", "set_mode", payload=command)
        assert applied["body"]["ok"]
        assert node.request({"op": "set_mode", "mode": "auto"})["ok"]  # set back locally
        assert node.stop() == 0
        conn = sqlite3.connect(node.data_dir / "agentd.db", isolation_level=None)
        assert conn.execute("DELETE FROM nonces").rowcount >= 1
        conn.close()
        node.start()
        _unanswered(node, alice, "alice", "set_mode", payload=command)  # still refused: the audit trail names it
        assert node.request({"op": "status"})["result"]["mode"] == "auto"
        assert cli(node.config_path, "audit", "verify").returncode == 0
    finally:
        node.stop()
