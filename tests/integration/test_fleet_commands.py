"""Signed fleet commands against a running node on a real broker: accepted, refused, audited."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import yaml

from agentd.commands import new_command
from agentd.config import load_config
from agentd.envelope import envelope
from agentd.hlc import Clock
from agentd.mesh import send_command
from agentd.pipeline import new_id
from agentd.signing import NodeKey, create_key_file
from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc, cli, freezer_config
from tests.integration.test_mesh_link import wait_connected


def _node(tmp_path: Path, port: int, operators: list[dict[str, Any]]) -> DaemonProc:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    cfg = freezer_config(data, mqtt_port=port)
    cfg["trust"] = {"operators": operators}
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    node = DaemonProc(config_path=path, data_dir=data)
    node.start()
    wait_connected(node)
    return node


def _send(node: DaemonProc, key: NodeKey, name: str, cmd: str, *, target: str = "it-node", args: dict[str, Any] | None = None,
          ttl: float = 60, payload: bytes | None = None) -> list[dict[str, Any]]:
    ident = new_id()
    if payload is None:
        body = new_command(cmd, target=target, args=args, ttl_s=ttl)
        payload = envelope("command", node=name, hlc=Clock().now(), body=body, key=key, ident=ident)
    else:
        ident = json.loads(payload)["id"]
    return send_command(load_config(node.config_path).config, payload, command_id=ident, target="it-node", timeout_s=10)


def test_fleet_commands_are_checked_applied_and_audited(tmp_path: Path, broker: Broker) -> None:
    keys = tmp_path / "keys"
    alice, _ = create_key_file(keys / "alice.key")
    bob, _ = create_key_file(keys / "bob.key")
    mallory, _ = create_key_file(keys / "mallory.key")
    node = _node(tmp_path, broker.port, [
        {"name": "alice", "key": alice.public_b64, "role": "admin"},
        {"name": "bob", "key": bob.public_b64, "role": "viewer"},
    ])
    try:
        # the CLI, as an operator uses it
        r = cli(node.config_path, "fleet", "send", "set_mode", "--target", "it-node", "--args", '{"mode": "rules_only"}',
                "--key", str(keys / "alice.key"), "--json")
        assert r.returncode == 0, r.stderr
        [reply] = json.loads(r.stdout)
        assert reply["body"]["ok"] and reply["body"]["result"] == {"mode": "rules_only"} and reply["node"] == "it-node"
        assert node.request({"op": "status"})["result"]["mode"] == "rules_only"

        [ok] = _send(node, bob, "bob", "status")
        assert ok["body"]["ok"] and ok["body"]["result"]["mode"] == "rules_only"

        def refused(replies: list[dict[str, Any]]) -> str:
            [rep] = replies
            assert rep["body"]["ok"] is False
            return str(rep["body"]["reason"])

        assert refused(_send(node, bob, "bob", "set_mode", args={"mode": "auto"})) == "forbidden"
        assert refused(_send(node, mallory, "mallory", "status")) == "unknown_signer"
        assert refused(_send(node, mallory, "alice", "set_mode", args={"mode": "auto"})) == "bad_signature"
        expired = envelope("command", node="alice", hlc=Clock().now(), key=alice, ident=new_id(),
                           body={**new_command("status", target="it-node"), "expires_at": time.time() - 5})
        assert refused(_send(node, alice, "alice", "status", payload=expired)) == "expired"
        assert refused(_send(node, alice, "alice", "status", target="other-node")) == "wrong_target"
        once = envelope("command", node="alice", hlc=Clock().now(), key=alice, ident=new_id(), body=new_command("status", target="it-node"))
        assert _send(node, alice, "alice", "status", payload=once)[0]["body"]["ok"]
        assert refused(_send(node, alice, "alice", "status", payload=once)) == "replayed"
        assert node.request({"op": "status"})["result"]["mode"] == "rules_only"  # nothing refused changed anything

        # set_config: a whole document, validated, applied, rolled back when it is bad
        cfg = yaml.safe_load(node.config_path.read_text())
        cfg["lifecycle"]["release"] = "it-2"
        [applied] = _send(node, alice, "alice", "set_config", args={"config": yaml.safe_dump(cfg)})
        assert applied["body"]["ok"], applied
        assert node.request({"op": "status"})["result"]["lifecycle"]["release"] == "it-2"
        [bad] = _send(node, alice, "alice", "set_config", args={"config": "skills: []\n"})
        assert bad["body"]["ok"] is False and "skills" in bad["body"]["error"]
        assert yaml.safe_load(node.config_path.read_text())["lifecycle"]["release"] == "it-2"

        # set_stage: promote the node; its decisions carry the new stage from then on
        [promoted] = _send(node, alice, "alice", "set_stage", args={"stage": "prod"})
        assert promoted["body"]["ok"] and promoted["body"]["result"] == {"stage": "prod"}
        event = {"temperature_c": -19.0, "door_open_s": 3.0, "compressor_a": 5.2}
        assert node.request({"op": "submit", "skill": "freezer_health", "data": event})["result"]["lifecycle"]["stage"] == "prod"
        assert refused(_send(node, bob, "bob", "set_stage", args={"stage": "dev"})) == "forbidden"

        # activate_model: switch the cascade's first stage to another declared model
        assert _send(node, alice, "alice", "set_mode", args={"mode": "auto"})[0]["body"]["ok"]
        [act] = _send(node, alice, "alice", "activate_model", args={"skill": "freezer_health", "stage": 0, "model": "slow"})
        assert act["body"]["ok"] and act["body"]["result"]["model"] == "slow"
        rec = node.request({"op": "submit", "skill": "freezer_health", "data": event})["result"]
        assert rec["stages"][0]["model"] == "slow" and rec["source"] == "rules"  # the slow model misses the deadline
        [nope] = _send(node, alice, "alice", "activate_model", args={"skill": "freezer_health", "stage": 0, "model": "ghost"})
        assert nope["body"]["ok"] is False and "unknown model" in nope["body"]["error"]

        conn = sqlite3.connect(node.data_dir / "agentd.db")
        audited = [json.loads(b) for (b,) in conn.execute("SELECT body FROM audit WHERE kind = 'command' ORDER BY seq")]
        reasons = [a.get("reason") for a in audited if not a["accepted"]]
        assert {"forbidden", "unknown_signer", "bad_signature", "expired", "replayed", "wrong_target"} <= set(reasons)
        assert sum(1 for a in audited if a["accepted"]) == 7
        assert cli(node.config_path, "audit", "verify").returncode == 0
    finally:
        node.stop()
