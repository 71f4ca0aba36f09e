"""Labels on a running node: `agentd label`, `agentd reject --action`, `agentd approve` and the signed
fleet command ``label`` (operator or above) record them; `agentd label export` and `agentd report` read them."""

from __future__ import annotations

import json
from pathlib import Path

from agentd.config.loader import load_config
from agentd.ops.evaluate import read_items
from agentd.trust.keys import create_key_file
from tests.integration.broker import Broker
from tests.integration.conftest import cli
from tests.integration.test_fleet_commands import _node, _send

EVENT = {"temperature_c": -19.0, "door_open_s": 3.0, "compressor_a": 5.2}


def test_labels_from_the_cli_and_the_fleet_reach_the_export_and_the_report(tmp_path: Path, broker: Broker) -> None:
    keys = tmp_path / "keys"
    alice, _ = create_key_file(keys / "alice.key")
    bob, _ = create_key_file(keys / "bob.key")
    node = _node(tmp_path, broker.port, [
        {"name": "alice", "key": alice.public_b64, "role": "operator"},
        {"name": "bob", "key": bob.public_b64, "role": "viewer"},
    ])
    try:
        first = node.request({"op": "submit", "skill": "freezer_health", "data": EVENT, "id": "ev-1"})["result"]
        assert node.request({"op": "set_mode", "mode": "manual"})["ok"]  # everything waits for a human
        asked = [node.request({"op": "submit", "skill": "freezer_health", "data": EVENT, "id": f"ev-{n}"})["result"] for n in (2, 3)]
        assert [a["status"] for a in asked] == ["pending_approval", "pending_approval"]

        r = cli(node.config_path, "label", "ev-1", "defrost", "--note", "iced up", "--by", "carol")
        assert r.returncode == 0 and f"{first['id']}: labelled defrost by carol" in r.stdout, r.stdout + r.stderr
        r = cli(node.config_path, "label", "ev-1", "explode")
        assert r.returncode == 2 and "'explode' is not an action of skill freezer_health" in r.stderr, r.stderr
        r = cli(node.config_path, "label", "no-such-event", "none")
        assert r.returncode == 1 and "no decision" in r.stderr, r.stderr

        requested = asked[0]["approval"]["requested_action"]
        other = next(a for a in ("defrost", "alert", "none") if a != requested)
        r = cli(node.config_path, "reject", asked[0]["id"][:12], "--action", other, "--reason", "not that", "--json")
        assert r.returncode == 0, r.stderr
        assert (json.loads(r.stdout)["status"], json.loads(r.stdout)["action"]) == ("rejected", other)
        assert cli(node.config_path, "approve", asked[1]["id"]).returncode == 0

        def refused(cmd_replies: list[dict[str, object]]) -> object:
            [reply] = cmd_replies
            body = reply["body"]
            assert isinstance(body, dict) and body["ok"] is False
            return body["reason"]

        assert refused(_send(node, bob, "bob", "label", args={"id": "ev-1", "action": "none"})) == "forbidden"
        [ok] = _send(node, alice, "alice", "label", args={"id": "ev-1", "action": "none", "note": "the door, after all"})
        assert ok["body"]["ok"], ok
        assert {k: ok["body"]["result"][k] for k in ("action", "source", "by")} == {"action": "none", "source": "operator", "by": "operator:alice"}
        bad = _send(node, alice, "alice", "label", args={"id": "ev-1", "action": "explode"})
        assert bad[0]["body"]["ok"] is False and "not an action" in bad[0]["body"]["error"]

        out = tmp_path / "labelled.jsonl"
        r = cli(node.config_path, "label", "export", "-o", str(out))
        assert r.returncode == 0 and "wrote 3 labelled decision(s)" in r.stderr, r.stderr
        items = {i.id: i for i in read_items(out, load_config(node.config_path).config)}
        assert {k: i.label for k, i in items.items()} == {"ev-1": "none", "ev-2": other, "ev-3": requested}
        assert items["ev-1"].fields == first["inputs"]

        report = json.loads(cli(node.config_path, "report", "--json").stdout)["labelled"]
        rules = next(r for r in report if r["role"] == "rules")
        assert rules["labelled"] == 3 and rules["label_sources"] == {"operator": 1, "rejection": 1, "approval": 1}
        assert any(r["role"] == "acted" and r["model"] == "freezer_anomaly" for r in report)
        assert node.stop() == 0
        assert cli(node.config_path, "audit", "verify").returncode == 0
    finally:
        node.stop()
