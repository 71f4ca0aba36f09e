"""A restore never rolls the command nonces back: a fleet command refused as a replay before a
restore of an older backup is still refused after it (issue 15, item 5)."""

from __future__ import annotations

import json
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
