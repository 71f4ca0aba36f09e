"""`agentd keys rotate` through the real CLI (issue 15, item 2): the node key changes by a
key_rotation record signed by both keys, the pin follows, the old public key is kept, and
`agentd audit verify` passes across the rotation, pinned to the new key or to the old one, for
the database and for an export made before it; the daemon carries on with the new key."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml

from agentd.trust.keys import create_key_file, load_key
from tests.integration.conftest import DaemonProc, cli

EVENT = {"temperature_c": -20.0, "door_open_s": 2.0, "compressor_a": 5.0}


def _decide(daemon: DaemonProc, prefix: str, n: int) -> None:
    for i in range(n):
        assert daemon.request({"op": "submit", "skill": "freezer_health", "data": EVENT, "id": f"{prefix}-{i}"})["ok"]


def test_a_rotated_key_keeps_the_history_verifiable(daemon: DaemonProc, tmp_path: Path) -> None:
    config, data = daemon.config_path, daemon.data_dir
    _decide(daemon, "before", 6)
    refused = cli(config, "keys", "rotate")
    assert refused.returncode == 1 and "another agentd" in refused.stderr  # not while the daemon runs
    assert daemon.stop() == 0
    before = tmp_path / "before.jsonl"
    assert cli(config, "audit", "export", "-o", str(before)).returncode == 0
    old = load_key(data).public_b64

    r = cli(config, "keys", "rotate", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    new = load_key(data).public_b64
    assert result["old"] == old and result["new"] == new != old
    assert (data / "keys" / "node.pub").read_text().strip() == new  # the pin follows
    retired = Path(result["retired_public_key"])
    assert retired.read_text().strip() == old
    assert load_key(data).path.stat().st_mode & 0o077 == 0
    conn = sqlite3.connect(f"file:{data / 'agentd.db'}?mode=ro", uri=True)
    try:
        kind, body = conn.execute("SELECT kind, body FROM audit WHERE seq = ?", (result["seq"],)).fetchone()
        signer = conn.execute("SELECT public_key FROM checkpoints WHERE seq = ?", (result["seq"],)).fetchone()[0]
    finally:
        conn.close()
    assert kind == "key_rotation" and json.loads(body)["old"] == old and json.loads(body)["new"] == new
    assert signer == new  # sealed at once by the new key

    for args in ((), ("--public-key", str(retired)), ("--public-key", new)):
        v = cli(config, "audit", "verify", *args)
        assert v.returncode == 0 and "intact" in v.stdout, (args, v.stdout, v.stderr)
    v = cli(config, "audit", "verify", "--export", str(before), "--public-key", str(retired))
    assert v.returncode == 0, v.stdout  # an export made before the rotation verifies with the old key
    stranger = create_key_file(tmp_path / "stranger.key")[0].public_b64
    assert cli(config, "audit", "verify", "--public-key", stranger).returncode == 1  # and not with any key

    daemon.start()  # the daemon signs with the new key from here on
    _decide(daemon, "after", 4)
    assert daemon.stop() == 0
    for args in ((), ("--public-key", str(retired))):
        v = cli(config, "audit", "verify", "--json", *args)
        assert v.returncode == 0, v.stdout
        assert json.loads(v.stdout)["key"] == new
    assert cli(config, "audit", "export", "-o", str(tmp_path / "all.jsonl")).returncode == 0
    v = cli(config, "audit", "verify", "--export", str(tmp_path / "all.jsonl"), "--public-key", str(retired))
    assert v.returncode == 0, v.stdout  # the whole history, across the rotation, with the old key


def test_a_config_that_pins_the_old_key_still_verifies_and_is_told_to_change(node_config: Path) -> None:
    daemon = DaemonProc(config_path=node_config, data_dir=node_config.parent / "data")
    daemon.start()
    _decide(daemon, "e", 3)
    assert daemon.stop() == 0
    old = load_key(daemon.data_dir).public_b64
    cfg = yaml.safe_load(node_config.read_text())
    cfg.setdefault("trust", {})["audit_public_key"] = old
    node_config.write_text(yaml.safe_dump(cfg))
    r = cli(node_config, "keys", "rotate")
    assert r.returncode == 0, r.stderr
    assert "trust.audit_public_key pins the old key" in r.stdout and "trust.peers.it-node" in r.stdout
    assert cli(node_config, "audit", "verify").returncode == 0
