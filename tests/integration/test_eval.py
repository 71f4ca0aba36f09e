"""`agentd eval` as a user runs it: the real CLI, the example freezer skill, the real ONNX model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from agentd.decision import quality
from agentd.devtools.labelled import freezer_events
from tests.integration.conftest import cli, freezer_config

# Hand-written readings beside the simulator's: a note, a dead compressor (shutdown: approval), a long door.
HAND = [
    ({"temperature_c": -4.0, "door_open_s": 0.0, "compressor_a": 0.1, "note": "compressor silent"}, "shutdown"),
    ({"temperature_c": -19.0, "door_open_s": 300.0, "compressor_a": 5.0}, "alert"),
    ({"temperature_c": -12.0, "door_open_s": 30.0, "compressor_a": 5.5, "note": "just restocked"}, "none"),
]


def rules_action(e: dict[str, Any]) -> str:
    """The rules of ``freezer_config``, written out (a pending shutdown counts as shutdown)."""
    if e["compressor_a"] < 0.5 and e["temperature_c"] > -10.0:
        return "shutdown"
    if e["door_open_s"] > 120.0:
        return "alert"
    return "none"


def _setup(tmp_path: Path) -> tuple[Path, Path, list[tuple[dict[str, Any], str]]]:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "agentd.yaml"
    config.write_text(yaml.safe_dump(freezer_config(data)))
    items = [*freezer_events(n=40, seed=5), *HAND]
    labelled = tmp_path / "set.jsonl"
    lines = [json.dumps({"id": f"r{i}", "skill": "freezer_health", "data": e, "label": label}) for i, (e, label) in enumerate(items)]
    labelled.write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n")  # a blank line is skipped
    return config, labelled, items


def test_eval_json_is_consistent(tmp_path: Path) -> None:
    config, labelled, items = _setup(tmp_path)
    r = cli(config, "eval", str(labelled), "--json", "--items", "--deadline-ms", "60000")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert not (tmp_path / "data" / "agentd.db").exists()  # the node's database is never touched
    assert report["file"] == str(labelled) and report["items"] == len(items)
    (sk,) = report["skills"]
    assert sk["skill"] == "freezer_health" and sk["items"] == len(items) and sk["deadline_ms"] == 60000
    assert sum(sk["labels"].values()) == len(items)
    rules, stage, cascade = sk["paths"]
    assert [p["path"] for p in sk["paths"]] == ["rules", "stage:freezer_anomaly", "cascade"]
    results = sk["results"]
    assert [x["id"] for x in results] == [f"r{i}" for i in range(len(items))]
    assert results[10]["line"] == 12  # after the blank line

    # rules: exactly what the rules say, covered everywhere, no confidence
    expected = [rules_action(e) for e, _ in items]
    assert [x["paths"]["rules"]["predicted"] for x in results] == expected
    right = sum(p == label for p, (_, label) in zip(expected, items, strict=True))
    assert rules["coverage"] == 1.0 and rules["correct"] == right
    assert rules["accuracy"] == round(right / len(items), 4)
    assert rules["calibration"] is None and rules["risk_coverage"] is None
    assert rules["asked"]["count"] == expected.count("shutdown") and rules["asked"]["reasons"] == {"action": expected.count("shutdown")}
    assert rules["confusion"] == quality.confusion([(label, p) for p, (_, label) in zip(expected, items, strict=True)], sk["actions"])

    # the stage alone: covered = accepted by its 0.8 gate; its numbers come from its own answers
    answers = [x["paths"]["stage:freezer_anomaly"] for x in results]
    assert stage["outcomes"].get("accepted", 0) == stage["covered"] == sum(a["covered"] for a in answers)
    assert all(a["covered"] == (a["confidence"] >= 0.8 and a["predicted"] is not None) for a in answers)
    assert stage["answered"] == len(items) == stage["calibration"]["n"] == stage["risk_coverage"]["n"]
    assert sum(map(sum, (row.values() for row in stage["confusion"].values()))) == stage["covered"]
    assert sum(stage["confusion"][a][a] for a in sk["actions"]) == stage["correct"]
    scored = [(a["confidence"], a["predicted"] == x["label"]) for a, x in zip(answers, results, strict=True)]
    raw_right = sum(c for _, c in scored)
    assert stage["raw_accuracy"] == round(raw_right / len(items), 4)
    assert stage["risk_coverage"]["points"][-1]["risk"] == round(1 - raw_right / len(items), 4)
    assert [p["coverage"] for p in stage["risk_coverage"]["points"]] == [round(0.1 * i, 1) for i in range(1, 11)]
    assert len(stage["calibration"]["bins"]) == 10 and sum(b["count"] for b in stage["calibration"]["bins"]) == len(items)
    # the confidences in the results are rounded to 4 places; the ECE agrees to that precision
    assert abs(quality.calibration(scored).ece - stage["calibration"]["ece"]) < 1e-3  # type: ignore[union-attr]

    # the cascade: the stage where its gate passed, the rules elsewhere
    for x, a in zip(results, answers, strict=True):
        c = x["paths"]["cascade"]
        assert c["predicted"] == (a["predicted"] if a["covered"] else x["paths"]["rules"]["predicted"])
        assert c["source"] == ("model" if a["covered"] else "rules")
    assert cascade["sources"].get("model", 0) == stage["covered"]
    assert sum(cascade["fallback_reasons"].values()) == len(items) - stage["covered"]
    assert cascade["coverage"] == 1.0 and cascade["calibration"]["n"] == stage["covered"]
    assert cascade["asked"]["count"] == sum(x["paths"]["cascade"]["predicted"] == "shutdown" for x in results)
    not_by_rules = sum(x["paths"]["cascade"]["asked"] and not x["paths"]["rules"]["asked"] for x in results)
    assert cascade["asked_not_by_rules"]["count"] == not_by_rules


def test_eval_text_and_options(tmp_path: Path) -> None:
    config, labelled, _ = _setup(tmp_path)
    r = cli(config, "eval", str(labelled), "--limit", "5", "--skill", "freezer_health")
    assert r.returncode == 0, r.stderr
    assert "freezer_health: 5 item(s)" in r.stdout and "deadline 200 ms" in r.stdout
    for text in ("rules", "stage:freezer_anomaly", "cascade", "confusion", "ECE", "AURC", "n/a (rules give no confidence)"):
        assert text in r.stdout
    limited = json.loads(cli(config, "eval", str(labelled), "--json", "--limit", "3").stdout)
    assert limited["items"] == 3 and "results" not in limited["skills"][0]


def test_eval_refuses_bad_lines_naming_them(tmp_path: Path) -> None:
    config, _, _ = _setup(tmp_path)
    good = json.dumps({"skill": "freezer_health", "data": {"temperature_c": -20, "door_open_s": 0, "compressor_a": 5}, "label": "none"})
    cases = {
        "is not JSON": "{nope",
        "not an action of skill freezer_health": json.dumps({"skill": "freezer_health", "data": {}, "label": "explode"}),
        "unknown skill 'fridge'": json.dumps({"skill": "fridge", "data": {}, "label": "none"}),
        "temperature_c": json.dumps({"skill": "freezer_health", "data": {"temperature_c": "cold", "door_open_s": 0, "compressor_a": 5}, "label": "none"}),
        "unknown key(s) 'lable'": json.dumps({"skill": "freezer_health", "data": {}, "lable": "none"}),
        "repeats line 1": json.dumps({"id": "a", **json.loads(good)}),
    }
    for i, (message, line) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.jsonl"
        first = json.dumps({"id": "a", **json.loads(good)})
        path.write_text(f"{first}\n{line}\n")
        r = cli(config, "eval", str(path))
        assert r.returncode == 2, (message, r.stdout, r.stderr)
        assert f"{path}:2" in r.stderr and message in r.stderr, r.stderr
    r = cli(config, "eval", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 2 and "cannot read" in r.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    r = cli(config, "eval", str(empty))
    assert r.returncode == 2 and "no labelled items" in r.stderr
