"""`agentd model card` writes an input card from training rows, and the engine gates on it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from tests.integration.conftest import cli, freezer_config


def _rows(n: int) -> list[dict[str, float]]:
    rng = random.Random(3)
    return [{"temperature_c": rng.gauss(-20, 1), "door_open_s": abs(rng.gauss(8, 5)), "compressor_a": rng.gauss(5, 0.4)} for _ in range(n)]


def test_model_card_is_written_from_training_rows_and_used(tmp_path: Path) -> None:
    cfg = freezer_config(tmp_path / "data")
    config = tmp_path / "agentd.yaml"
    config.write_text(yaml.safe_dump(cfg))
    training = tmp_path / "training.jsonl"
    # both shapes a row may have: the fields themselves, or an eval line
    lines = [json.dumps(r) if i % 2 else json.dumps({"skill": "freezer_health", "data": r, "label": "none"}) for i, r in enumerate(_rows(300))]
    training.write_text("\n".join(lines) + "\n")
    out = tmp_path / "freezer.card.json"
    done = cli(config, "model", "card", "freezer_anomaly", "--data", str(training), "--out", str(out), "--json")
    summary = json.loads(done.stdout)
    assert summary["samples"] == 300 and summary["inputs"] == ["temperature_c", "door_open_s", "compressor_a"]
    card = json.loads(out.read_text())
    assert card["kind"] == "agentd-input-card" and len(card["joint"]["points"]) == 300
    # the engine uses it: a reading like the training rows passes, one unlike them falls back
    model = next(m for m in cfg["models"] if m["name"] == "freezer_anomaly")
    model["card"] = str(out)
    config.write_text(yaml.safe_dump(cfg))
    like = json.loads(cli(config, "decide", "freezer_health", "--data", json.dumps(_rows(1)[0]), "--json").stdout)
    unlike = json.loads(cli(config, "decide", "freezer_health", "--json", "--data",
                            json.dumps({"temperature_c": -19.0, "door_open_s": 240.0, "compressor_a": 5.0})).stdout)
    assert like["stages"][-1]["outcome"] != "out_of_distribution"
    assert unlike["fallback_reason"] == "out_of_distribution" and unlike["stages"][-1]["ood_field"] == "door_open_s"


def test_model_card_refuses_bad_training_data_naming_the_line(tmp_path: Path) -> None:
    config = tmp_path / "agentd.yaml"
    config.write_text(yaml.safe_dump(freezer_config(tmp_path / "data")))
    training = tmp_path / "training.jsonl"
    training.write_text('{"temperature_c": -20, "door_open_s": 1, "compressor_a": 5}\n[1, 2]\n')
    done = cli(config, "model", "card", "freezer_anomaly", "--data", str(training))
    assert done.returncode == 2 and f"{training}:2" in done.stderr
    short = tmp_path / "short.jsonl"
    short.write_text('{"temperature_c": -20, "door_open_s": 1, "compressor_a": 5}\n' * 5)
    done = cli(config, "model", "card", "freezer_anomaly", "--data", str(short))
    assert done.returncode == 2 and "at least" in done.stderr
    done = cli(config, "model", "card", "no_such_model", "--data", str(short))
    assert done.returncode != 0 and "no_such_model" in done.stderr
