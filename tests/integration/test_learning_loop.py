"""The operator loop through a running daemon and the real CLI: decide, label, calibrate, demote, promote."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.integration.conftest import DaemonProc, cli, freezer_config

DOOR = {"temperature_c": -15.0, "door_open_s": 200.0, "compressor_a": 6.4}  # the model: door_open (alert), very sure


def test_label_calibrate_demote_promote_through_the_cli(tmp_path: Path) -> None:
    cfg = freezer_config(tmp_path / "data")
    config = tmp_path / "agentd.yaml"
    config.write_text(yaml.safe_dump(cfg))
    node = DaemonProc(config_path=config, data_dir=tmp_path / "data")
    node.start()
    try:
        for i in range(8):
            rec = node.request({"op": "submit", "skill": "freezer_health", "data": {**DOOR, "door_open_s": 200.0 + i}, "id": f"d-{i}"})["result"]
            assert rec["source"] == "model" and rec["action"] == "alert"
            label = node.request({"op": "label", "id": rec["id"], "action": "alert" if i % 4 == 0 else "none", "by": "alice"})
            assert label["ok"], label
        fitted = json.loads(cli(config, "calibrate", "--min-labels", "5", "--json").stdout)["models"]
        row = next(r for r in fitted if r["model"] == "freezer_anomaly@1")
        assert row["fitted"] and row["temperature"] > 1.0 and row["ece_after"] < row["ece_before"]
        text = cli(config, "calibrate", "--min-labels", "5")
        assert text.returncode == 0 and "freezer_anomaly@1" in text.stdout

        demoted = cli(config, "demote", "freezer_health", "--by", "bob", "--json")
        assert (json.loads(demoted.stdout)["from"], json.loads(demoted.stdout)["to"]) == ("acting", "shadow")
        status = json.loads(cli(config, "status", "--json").stdout)
        states = status.get("stage_states") or status.get("engine", {}).get("stage_states")
        assert states is not None and [s["state"] for s in states if s["skill"] == "freezer_health"] == ["shadow"]
        after = node.request({"op": "submit", "skill": "freezer_health", "data": DOOR, "id": "after-demote"})["result"]
        assert (after["source"], after["fallback_reason"], after["rule"]) == ("rules", "demoted", "door")
        promoted = json.loads(cli(config, "promote", "freezer_health", "--json").stdout)
        assert (promoted["from"], promoted["to"]) == ("shadow", "acting")
        again = node.request({"op": "submit", "skill": "freezer_health", "data": DOOR, "id": "after-promote"})["result"]
        stage = again["stages"][0]  # acting again, on its calibrated confidence: no longer sure enough for the 0.8 gate
        assert (stage["model"], stage["temperature"], stage["outcome"]) == ("freezer_anomaly", row["temperature"], "low_confidence")
        assert stage["raw_confidence"] > 0.9 > stage["confidence"]
        bad = cli(config, "demote", "no_such_skill")
        assert bad.returncode != 0 and "no_such_skill" in (bad.stderr + bad.stdout)
        assert cli(config, "audit", "verify").returncode == 0
    finally:
        node.stop()
