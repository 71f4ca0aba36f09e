"""Approvals name the right decision and the real person (issue 15, item 6), through a running daemon."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import yaml

from tests.integration.conftest import DaemonProc, cli, freezer_config

DEAD = {"temperature_c": -2.0, "door_open_s": 0.0, "compressor_a": 0.1}  # the rules: shutdown, which waits for approval


def test_an_event_named_like_a_short_decision_id_is_never_what_gets_approved(tmp_path: Path) -> None:
    cfg = freezer_config(tmp_path / "data")
    config = tmp_path / "agentd.yaml"
    config.write_text(yaml.safe_dump(cfg))
    node = DaemonProc(config_path=config, data_dir=tmp_path / "data")
    node.start()
    try:
        real = node.request({"op": "submit", "skill": "freezer_health", "data": DEAD, "id": "genuine-1"})["result"]
        assert real["status"] == "pending_approval"
        short = real["id"][:12]  # what `agentd decisions` shows
        # an attacker with publish rights names their own event after that short id
        bait = node.request({"op": "submit", "skill": "freezer_health", "data": DEAD, "id": short})["result"]
        assert bait["status"] == "pending_approval" and bait["event_id"] == short
        done = cli(config, "approve", short, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["id"] == real["id"]
        pending = json.loads(cli(config, "approvals", "--json").stdout)
        assert [p["decision_id"] for p in pending] == [bait["id"]]
        # too short a prefix, or the event id itself, names no decision
        assert cli(config, "reject", short[:6]).returncode != 0
        assert node.request({"op": "approve", "id": "genuine-1", "by": "x"})["ok"] is False
        # the fleet path takes the same ids: over the socket here, as `fleet send` would carry them
        claimed = node.request({"op": "approve", "id": bait["id"], "by": "mallory"})
        assert claimed["ok"], claimed
        user = pwd.getpwuid(os.getuid()).pw_name
        assert claimed["result"]["approval"]["resolved_by"] == f"mallory via local:{user}(uid={os.getuid()})"
        explained = json.loads(cli(config, "explain", real["id"], "--json").stdout)
        audit = [a for a in explained["audit"] if a["kind"] == "approval"]
        assert audit and audit[0]["body"]["by"] == f"local:{user}(uid={os.getuid()})"
    finally:
        node.stop()
