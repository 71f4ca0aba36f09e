"""agentd.ops.label_quality and `agentd report` on labelled decisions, with figures worked out by hand.

Four labelled decisions of the freezer skill (tests/conftest.py), each with the acted stage
``fast`` (version 1) on its trace, two with a shadow answer of ``big`` (version 2):

    decision  fast: action conf outcome      rules' answer        label (latest)
    d1        alert    0.9  accepted        alert (rules_answer) alert (approval)
    d2        alert    0.8  accepted        none  (rules_answer) none
    d3        defrost  0.6  low_confidence  alert (rule warm)    defrost
    d4        shutdown 0.3  low_confidence  none  (rule all_good) alert (corrects an earlier none)

fast: 2 of 4 right (d1, d3); of the 2 that passed the gates (d1, d2) 1 right; it agrees with
the rules on d1 only (1 of 4). Every confidence is in a bin of its own, so ECE is the mean
gap: (|1-0.9| + |0-0.8| + |1-0.6| + |0-0.3|) / 4 = 0.4. Most confident first: right, wrong,
right, wrong, so the risks at k = 1..4 are 0, 1/2, 1/3, 1/2 and AURC = (4/3)/4 = 1/3; at 50 %
coverage (k = 2) the risk is 1/2. The rules: right on d1, d2 (2 of 4). big on d1 (alert at
0.7) and d2 (none at 0.95): both right, ECE (0.3 + 0.05) / 2 = 0.175, AURC 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agentd.cli import main
from agentd.config.loader import LoadedConfig
from agentd.ops import label_quality
from agentd.state import labels, queries, reports
from agentd.state.queries import DecisionFilter
from agentd.state.store import DecisionWrite, LabelWrite, Store
from agentd.trust.keys import NodeKey
from tests.conftest import make_config

SHA = "ab" * 32


def decision(rid: str, stage: dict[str, Any], **extra: Any) -> dict[str, Any]:
    rec = {
        "id": rid, "event_id": f"e-{rid}", "node": "test-node", "skill": "freezer", "action": "alert", "status": "decided",
        "source": "rules", "model": None, "confidence": None, "fallback_reason": None, "rule": None, "guard": None,
        "latency_ms": 1.0, "stages": [{"model": "fast", "answer": stage["action"], "latency_ms": 1.0, **stage}],
        "late_answer": None, "hlc": "1700000000000-0000", "created_at": round(time.time(), 6),
        "lifecycle": {"stage": "dev", "release": "test-1", "config_sha256": SHA, "models": {"fast": "1"}},
        "inputs": {"temperature_c": -5.0}, "mode": "auto", "origin": "local",
    }
    rec.update(extra)
    return rec


RECORDS = [
    decision("d1", {"action": "alert", "confidence": 0.9, "outcome": "accepted"}, source="model",
             rules_answer={"action": "alert", "rule": "warm"}),
    decision("d2", {"action": "alert", "confidence": 0.8, "outcome": "accepted"}, source="model",
             rules_answer={"action": "none", "rule": "all_good"}),
    decision("d3", {"action": "defrost", "confidence": 0.6, "outcome": "low_confidence"}, rule="warm",
             fallback_reason="low_confidence"),
    decision("d4", {"action": "shutdown", "confidence": 0.3, "outcome": "low_confidence"}, rule="all_good", action="none",
             fallback_reason="low_confidence"),
    decision("d5", {"action": "alert", "confidence": 0.9, "outcome": "accepted"}, source="model",
             rules_answer={"action": "alert", "rule": "warm"}),  # never labelled
]
LABELS = [("d1", "alert", "approval"), ("d2", "none", "operator"), ("d3", "defrost", "operator"),
          ("d4", "none", "operator"), ("d4", "alert", "operator")]
SHADOWS = [("d1", "alert", 0.7), ("d2", "none", 0.95), ("d5", "shutdown", 0.99)]


async def populate(cfg: LoadedConfig, key: NodeKey) -> None:
    async with Store(data_dir=cfg.config.data_dir, key=key, node="test-node") as st:
        for rec in RECORDS:
            await st.record_decision(DecisionWrite(rec["event_id"], "freezer", rec["created_at"], rec["inputs"], rec, "test-node"))
        for rid, action, source in LABELS:
            await st.add_label(LabelWrite(rid, f"e-{rid}", "freezer", action, source, "alice"))
        for rid, action, conf in SHADOWS:
            answer = reports.ShadowAnswer(rid, 1, "freezer", "big", "2", "dev", "test-1", "accepted", action, action, conf, 2.0, "alert")
            await st.write(lambda conn, a=answer: reports.insert(conn, a))


@pytest.fixture
async def node(tmp_path: Path, node_key: NodeKey) -> LoadedConfig:
    cfg = make_config(tmp_path)
    await populate(cfg, node_key)
    return cfg


def rows_by_role(cfg: LoadedConfig, **filters: Any) -> dict[str, dict[str, Any]]:
    conn = queries.open_readonly(cfg.config.data_dir)
    return {r["role"]: r for r in label_quality.report(conn, cfg.config, DecisionFilter(**filters))}


def test_the_acted_stage_on_labelled_decisions(node: LoadedConfig) -> None:
    fast = rows_by_role(node)["acted"]
    assert (fast["skill"], fast["model"], fast["version"]) == ("freezer", "fast", "1")
    assert (fast["labelled"], fast["answered"], fast["correct"], fast["accuracy"]) == (4, 4, 2, 0.5)
    assert (fast["accepted"], fast["accepted_accuracy"]) == (2, 0.5)
    assert (fast["beside_rules"], fast["rules_agreement"]) == (4, 0.25)
    assert fast["calibration"]["ece"] == pytest.approx(0.4) and fast["calibration"]["n"] == 4
    bins = {b["lo"]: (b["count"], b["accuracy"]) for b in fast["calibration"]["bins"] if b["count"]}
    assert bins == {0.9: (1, 1.0), 0.8: (1, 0.0), 0.6: (1, 1.0), 0.3: (1, 0.0)}
    assert fast["risk_coverage"]["aurc"] == pytest.approx(1 / 3, abs=1e-4)
    assert {p["coverage"]: p["risk"] for p in fast["risk_coverage"]["points"]}[0.5] == 0.5
    assert fast["confusion"] == {
        "none": {"none": 0, "alert": 1, "defrost": 0, "shutdown": 0},
        "alert": {"none": 0, "alert": 1, "defrost": 0, "shutdown": 1},
        "defrost": {"none": 0, "alert": 0, "defrost": 1, "shutdown": 0},
        "shutdown": {"none": 0, "alert": 0, "defrost": 0, "shutdown": 0},
    }
    assert fast["label_sources"] == {"operator": 3, "approval": 1}


def test_the_shadow_stage_and_the_rules_on_the_same_decisions(node: LoadedConfig) -> None:
    rows = rows_by_role(node)
    big, rules = rows["shadow"], rows["rules"]
    assert (big["model"], big["version"], big["labelled"], big["accuracy"], big["rules_agreement"]) == ("big", "2", 2, 1.0, 1.0)
    assert big["calibration"]["ece"] == pytest.approx(0.175) and big["risk_coverage"]["aurc"] == 0.0
    assert (rules["model"], rules["version"]) == ("rules", SHA[:12])
    assert (rules["labelled"], rules["answered"], rules["correct"], rules["accuracy"]) == (4, 4, 2, 0.5)
    assert rules["calibration"] is None and rules["risk_coverage"] is None and rules["rules_agreement"] is None
    assert rules["confusion"]["defrost"]["alert"] == 1 and rules["confusion"]["alert"]["none"] == 1
    assert list(rows) == ["acted", "shadow", "rules"]
    assert rows_by_role(node, skill="other") == {}


def test_the_rules_answer_of_a_decision(tmp_path: Path) -> None:
    skill = make_config(tmp_path).config.skill("freezer")
    assert label_quality.rules_action({"rules_answer": {"action": "none", "rule": "all_good"}, "rule": None}, skill) == "none"
    assert label_quality.rules_action({"rule": "hot", "action": "alert", "source": "human"}, skill) == "shutdown"
    gone = {"rule": "retired", "action": "defrost", "source": "rules", "guard": None}
    assert label_quality.rules_action(gone, skill) == "defrost"  # a rule no longer in the config: the record says
    assert label_quality.rules_action({**gone, "guard": "cap"}, skill) is None  # ...unless a guard replaced its answer
    assert label_quality.rules_action({"rule": None, "source": "model", "action": "alert"}, skill) is None


def test_agentd_report_shows_the_labelled_figures(node: LoadedConfig) -> None:
    runner = CliRunner()
    text = runner.invoke(main, ["report", "--config", str(node.path)])
    assert text.exit_code == 0, text.output
    out = text.output
    assert "freezer  fast (version 1)  acted: 4 labelled (operator 3, approval 1)" in out
    assert "  answered 4: accuracy 50% (2 right); passed the gates 2: accuracy 50%" in out
    assert "  rules agree 25% (of 4)  ECE 0.400  AURC 0.333  risk at 50% coverage 0.5" in out
    assert f"freezer  rules (config {SHA[:12]}): 4 labelled" in out
    assert "  label \\ answer  none  alert  defrost  shutdown" in out
    as_json = json.loads(runner.invoke(main, ["report", "--config", str(node.path), "--json"]).output)
    assert [r["role"] for r in as_json["labelled"]] == ["acted", "shadow", "rules"]


async def test_a_report_without_labels_says_how_to_make_them(tmp_path: Path, node_key: NodeKey) -> None:
    cfg = make_config(tmp_path)
    async with Store(data_dir=cfg.config.data_dir, key=node_key, node="test-node") as st:
        rec = RECORDS[0]
        await st.record_decision(DecisionWrite(rec["event_id"], "freezer", rec["created_at"], rec["inputs"], rec, "test-node"))
    out = CliRunner().invoke(main, ["report", "--config", str(cfg.path)]).output
    assert "labelled decisions: none yet (agentd label ID ACTION" in out
    assert labels.for_decision(queries.open_readonly(cfg.config.data_dir), "d1") == []
