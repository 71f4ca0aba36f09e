"""The decision gates of issue 13, on the real engine (SQLite, CEL, delay and ONNX stages):
rules beside every model answer, what a disagreement does, uncertain means ask, and the
out-of-distribution gate of a model's input card."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentd.config.loader import LoadedConfig
from agentd.decision.engine import Engine
from agentd.stages.card import build_card
from agentd.trust.keys import NodeKey
from tests.conftest import MINILM

SKILL = "freezer"
COLD = {"temperature_c": -20.0}  # rules: all_good -> none; the delay model says warn -> alert
HOT = {"temperature_c": 5.0}  # rules: hot -> shutdown (needs approval)
ROOT = Path(__file__).resolve().parent.parent.parent
SHIPPED_MODEL = ROOT / "models" / "freezer_anomaly.int8.onnx"
Factory = Callable[..., LoadedConfig]


async def decide(cfg: LoadedConfig, key: NodeKey, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    async with Engine(loaded=cfg, key=key, run_handlers=False) as eng:
        rec = await eng.decide(SKILL, data)
        return rec, dict(eng.counters)


async def test_rules_answer_is_kept_beside_an_agreeing_model(config_factory: Factory, node_key: NodeKey) -> None:
    rec, counters = await decide(config_factory(skill={"rules": [
        {"name": "cold_alert", "when": "temperature_c < 0.0", "action": "alert"},
        {"name": "all_good", "default": True, "action": "none"}]}), node_key, COLD)
    assert (rec["action"], rec["source"], rec["rule"]) == ("alert", "model", None)
    assert rec["rules_answer"] == {"action": "alert", "rule": "cold_alert"}
    assert not any(k.startswith("disagreement:") for k in counters)


async def test_disagreement_model_stands_by_default_and_is_counted(config_factory: Factory, node_key: NodeKey) -> None:
    rec, counters = await decide(config_factory(), node_key, COLD)
    assert (rec["action"], rec["source"], rec["fallback_reason"]) == ("alert", "model", None)
    assert rec["rules_answer"] == {"action": "none", "rule": "all_good"}
    assert counters["disagreement:fast@1"] == 1


async def test_disagreement_rules_decide(config_factory: Factory, node_key: NodeKey) -> None:
    rec, _ = await decide(config_factory(skill={"on_disagreement": "rules"}), node_key, COLD)
    assert (rec["action"], rec["source"], rec["fallback_reason"], rec["rule"]) == ("none", "rules", "disagreement", "all_good")
    assert rec["model"] is None and rec["confidence"] is None
    assert [(s["answer"], s["action"], s["outcome"]) for s in rec["stages"]] == [("warn", "alert", "disagreement")]


async def test_disagreement_safer_takes_the_more_severe(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(skill={"on_disagreement": "safer"})
    cold, _ = await decide(cfg, node_key, COLD)
    assert (cold["action"], cold["source"]) == ("alert", "model")  # alert is more severe than none
    hot, _ = await decide(cfg, node_key, HOT)  # model alert, rules shutdown: the rules' shutdown, which waits
    assert (hot["status"], hot["source"], hot["fallback_reason"]) == ("pending_approval", "rules", "disagreement")
    assert hot["approval"]["requested_action"] == "shutdown" and hot["approval"]["because"] == "action"


async def test_disagreement_safer_follows_a_declared_severity(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(skill={"on_disagreement": "safer", "severity": ["alert", "none", "defrost", "shutdown"]})
    rec, _ = await decide(cfg, node_key, COLD)
    assert (rec["action"], rec["source"]) == ("none", "rules")


async def test_disagreement_ask_sends_it_to_a_human_with_the_rules_answer_in_force(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(skill={"on_disagreement": "ask", "approval": {"on_reject": "defrost", "on_timeout": "defrost"}})
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        rec = await eng.decide(SKILL, COLD)
        assert (rec["status"], rec["action"], rec["fallback_reason"]) == ("pending_approval", "none", "disagreement")
        assert rec["approval"]["requested_action"] == "alert" and rec["approval"]["because"] == "disagreement"
        rejected = await eng.reject(rec["id"], by="bob")
        counters = dict(eng.counters)
    # A rejected doubt keeps the rules' answer: on_reject is for a listed action such as shutdown.
    assert (rejected["status"], rejected["action"]) == ("rejected", "none")
    assert counters["asked:disagreement"] == 1


async def test_disagreement_ask_does_not_ask_when_the_rules_are_the_safer(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(skill={"on_disagreement": "ask", "approval": {"actions": []}})
    rec, _ = await decide(cfg, node_key, HOT)
    assert (rec["status"], rec["action"], rec["source"], rec["fallback_reason"]) == ("decided", "shutdown", "rules", "disagreement")


async def test_low_confidence_goes_to_the_rules_unless_the_skill_asks(config_factory: Factory, node_key: NodeKey) -> None:
    silent, _ = await decide(config_factory(model={"confidence": 0.5}), node_key, COLD)
    assert (silent["status"], silent["action"], silent["fallback_reason"]) == ("decided", "none", "low_confidence")
    cfg = config_factory(model={"confidence": 0.5}, skill={"uncertain": {"ask": ["low_confidence"]}})
    asked, counters = await decide(cfg, node_key, COLD)
    assert (asked["status"], asked["action"], asked["fallback_reason"]) == ("pending_approval", "none", "low_confidence")
    assert asked["approval"]["requested_action"] == "alert" and asked["approval"]["because"] == "low_confidence"
    assert counters["asked:low_confidence"] == 1


async def test_an_unsure_answer_milder_than_the_rules_asks_nobody(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(model={"confidence": 0.5}, skill={"uncertain": {"ask": ["low_confidence"]}, "approval": {"actions": []}})
    rec, _ = await decide(cfg, node_key, HOT)  # the model's unsure alert is milder than the rules' shutdown
    assert (rec["status"], rec["action"], rec["source"]) == ("decided", "shutdown", "rules")


async def test_uncertain_interim_is_what_applies_while_asked(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(model={"confidence": 0.5, "label": "critical"},
                         skill={"uncertain": {"ask": ["low_confidence"], "interim": "alert"}, "approval": {"actions": []},
                                "cascade": [{"model": "fast", "min_confidence": 0.8, "map": {"critical": "shutdown"}}]})
    rec, _ = await decide(cfg, node_key, COLD)
    assert (rec["status"], rec["action"]) == ("pending_approval", "alert")
    assert rec["approval"]["requested_action"] == "shutdown"


# -- possible_severe: a model's "nothing to do" that did not rule out something severe ------------

CALM = {"label": "ok", "confidence": 0.95}  # the model says all is well (mapped to the default rule's none)
SEVERE_SKILL = {"uncertain": {"ask": ["possible_severe"], "actions": ["alert"], "severe_share": 0.03},
                "cascade": [{"model": "fast", "min_confidence": 0.8, "map": {"ok": "none", "warn": "alert"}}]}


async def test_nothing_to_do_with_a_severe_share_over_the_floor_is_asked_about(config_factory: Factory, node_key: NodeKey) -> None:
    rec, counters = await decide(config_factory(model={**CALM, "scores": {"warn": 0.05}}, skill=SEVERE_SKILL), node_key, COLD)
    assert (rec["status"], rec["action"], rec["source"], rec["fallback_reason"]) == ("pending_approval", "none", "rules", "possible_severe")
    assert rec["approval"]["requested_action"] == "alert" and rec["approval"]["because"] == "possible_severe"
    assert rec["stages"][0]["outcome"] == "possible_severe" and rec["stages"][0]["severe"] == {"action": "alert", "share": 0.05}
    assert counters["asked:possible_severe"] == 1


async def test_a_rejected_possible_severe_keeps_its_interim_not_on_reject(config_factory: Factory, node_key: NodeKey) -> None:
    skill = {**SEVERE_SKILL, "approval": {"actions": ["shutdown"], "interim": "alert", "on_reject": "defrost", "on_timeout": "defrost"}}
    async with Engine(loaded=config_factory(model={**CALM, "scores": {"warn": 0.05}}, skill=skill), key=node_key, run_handlers=False) as eng:
        rec = await eng.decide(SKILL, COLD)
        assert rec["approval"]["because"] == "possible_severe"
        rejected = await eng.reject(rec["id"], by="bob")
    assert (rejected["status"], rejected["action"]) == ("rejected", "none")  # the doubt was wrong: nothing to do stands


async def test_nothing_to_do_with_a_severe_share_under_the_floor_stands(config_factory: Factory, node_key: NodeKey) -> None:
    rec, _ = await decide(config_factory(model={**CALM, "scores": {"warn": 0.01}}, skill=SEVERE_SKILL), node_key, COLD)
    assert (rec["status"], rec["action"], rec["source"]) == ("decided", "none", "model")


async def test_the_floor_reads_only_answers_of_nothing_to_do(config_factory: Factory, node_key: NodeKey) -> None:
    # An accepted alert that gives shutdown 20 % is not a silent answer: it stands.
    skill = {**SEVERE_SKILL, "uncertain": {**SEVERE_SKILL["uncertain"], "actions": ["shutdown"]},
             "cascade": [{"model": "fast", "min_confidence": 0.5, "map": {"warn": "alert", "crit": "shutdown"}}]}
    rec, _ = await decide(config_factory(model={"label": "warn", "confidence": 0.8, "scores": {"crit": 0.2}}, skill=skill), node_key, COLD)
    assert (rec["status"], rec["action"], rec["source"]) == ("decided", "alert", "model")


async def test_danger_rules_are_not_overruled_by_a_model_saying_nothing_to_do(config_factory: Factory, node_key: NodeKey) -> None:
    warm = {"temperature_c": -5.0}  # rules: warm -> alert
    rec, _ = await decide(config_factory(model=CALM, skill=SEVERE_SKILL), node_key, warm)
    assert (rec["status"], rec["action"], rec["source"], rec["fallback_reason"], rec["rule"]) == (
        "decided", "alert", "rules", "possible_severe", "warm")
    assert rec["stages"][0]["severe"] == {"action": "alert", "rule": "warm"}
    # Without possible_severe asked about, the model stands (on_disagreement: model).
    plain = {**SEVERE_SKILL, "uncertain": {"ask": [], "actions": ["alert"]}}
    rec, _ = await decide(config_factory(model=CALM, skill=plain), node_key, warm)
    assert (rec["action"], rec["source"]) == ("none", "model")


def test_severe_share_needs_the_severe_actions(config_factory: Factory) -> None:
    with pytest.raises(Exception, match=r"severe_share needs uncertain\.actions"):
        config_factory(skill={"uncertain": {"ask": ["possible_severe"], "severe_share": 0.1}})


# -- the out-of-distribution gate, with the shipped ONNX model and a card ------------------------


@pytest.fixture
def onnx_config(config_factory: Factory, tmp_path: Path) -> Callable[..., LoadedConfig]:
    """The shipped freezer model behind a card made from a narrow set of training inputs."""
    card = tmp_path / "narrow.card.json"
    rows = [{"temperature_c": -20.0 + (i % 10) * 0.3, "door_open_s": float(i % 20), "compressor_a": 4.5 + (i % 7) * 0.2} for i in range(200)]
    card.write_text(json.dumps(build_card(rows, ["temperature_c", "door_open_s", "compressor_a"])))

    def make(**skill: Any) -> LoadedConfig:
        return config_factory(
            models=[{"name": "freezer", "backend": "onnx", "path": str(SHIPPED_MODEL), "card": str(card),
                     "sha256": "aeb5a7fa971ea655338612e9a8f40f9b51fd278a47e0bd8d567a82101e8511da",
                     "inputs": ["temperature_c", "door_open_s", "compressor_a"], "labels": ["normal", "door_open", "icing", "failure"]}],
            skill={"input": {"temperature_c": {"type": "number"}, "door_open_s": {"type": "number"}, "compressor_a": {"type": "number"}},
                   "cascade": [{"model": "freezer", "min_confidence": 0.5,
                                "map": {"normal": "none", "door_open": "alert", "icing": "defrost", "failure": "shutdown"}}],
                   "approval": {"actions": []}, **skill})

    return make


async def test_an_input_like_the_training_data_passes_the_card(onnx_config: Callable[..., LoadedConfig], node_key: NodeKey) -> None:
    rec, _ = await decide(onnx_config(), node_key, {"temperature_c": -19.0, "door_open_s": 5.0, "compressor_a": 5.0})
    stage = rec["stages"][0]
    assert stage["outcome"] == "accepted" and stage["ood_score"] <= 1.0 and "ood_field" not in stage
    assert rec["source"] == "model"


async def test_an_input_outside_the_card_falls_back_with_its_score(onnx_config: Callable[..., LoadedConfig], node_key: NodeKey) -> None:
    # Door open 250 s at -19 C: inside every field's schema, outside what this model was shown.
    rec, _ = await decide(onnx_config(), node_key, {"temperature_c": -19.0, "door_open_s": 250.0, "compressor_a": 5.0})
    stage = rec["stages"][0]
    assert (rec["source"], rec["fallback_reason"], rec["rule"]) == ("rules", "out_of_distribution", "all_good")
    assert stage["outcome"] == "out_of_distribution" and stage["ood_field"] == "door_open_s" and stage["ood_score"] > 1.0
    assert stage["answer"] is not None  # the model's answer is kept on the trace, never acted on


async def test_the_card_can_be_recorded_without_gating(onnx_config: Callable[..., LoadedConfig], node_key: NodeKey) -> None:
    cfg = onnx_config(cascade=[{"model": "freezer", "min_confidence": 0.5, "max_ood_score": None,
                                "map": {"normal": "none", "door_open": "alert", "icing": "defrost", "failure": "shutdown"}}])
    rec, _ = await decide(cfg, node_key, {"temperature_c": -19.0, "door_open_s": 250.0, "compressor_a": 5.0})
    assert rec["stages"][0]["outcome"] != "out_of_distribution" and rec["stages"][0]["ood_score"] > 1.0


async def test_out_of_distribution_can_ask(onnx_config: Callable[..., LoadedConfig], node_key: NodeKey) -> None:
    # -5 C with the compressor off: the model says failure (shutdown), the rules say warm (alert);
    # the model was never shown -5 C, so a human is asked about the shutdown while the alert applies.
    rec, counters = await decide(onnx_config(uncertain={"ask": ["out_of_distribution"]}), node_key,
                                 {"temperature_c": -5.0, "door_open_s": 0.0, "compressor_a": 0.0})
    stage = rec["stages"][0]
    assert (stage["outcome"], stage["action"], stage["ood_field"]) == ("out_of_distribution", "shutdown", "temperature_c")
    assert (rec["status"], rec["action"], rec["rule"]) == ("pending_approval", "alert", "warm")
    assert rec["approval"]["requested_action"] == "shutdown" and rec["approval"]["because"] == "out_of_distribution"
    assert counters["asked:out_of_distribution"] == 1


# -- a text stage that has nothing to read is not asked --------------------------------------


async def test_a_text_stage_without_text_abstains_and_the_next_stage_decides(config_factory: Factory, node_key: NodeKey) -> None:
    reader = {"name": "reader", "backend": "embedding", "fields": ["note"], **MINILM,
              "examples": [{"text": "delivery being unloaded", "label": "none"}, {"text": "compressor is smoking", "label": "shutdown"}]}
    cfg = config_factory(models=[{"name": "fast", "backend": "delay", "delay_ms": 1, "label": "warn", "confidence": 0.95}, reader],
                         skill={"cascade": [{"model": "reader", "min_confidence": 0.6}, {"model": "fast", "min_confidence": 0.8, "map": {"warn": "alert"}}],
                                "approval": {"actions": []}})
    silent, _ = await decide(cfg, node_key, COLD)
    assert [(s["model"], s["outcome"]) for s in silent["stages"]] == [("reader", "abstained"), ("fast", "accepted")]
    noted, _ = await decide(cfg, node_key, {**COLD, "note": "the delivery is being unloaded"})
    assert (noted["action"], noted["model"]["name"]) == ("none", "reader") and noted["stages"][0]["outcome"] == "accepted"


async def test_the_report_counts_disagreements_and_asks(config_factory: Factory, node_key: NodeKey) -> None:
    from agentd.state import queries, reports

    cfg = config_factory(skill={"on_disagreement": "ask", "approval": {"actions": []}})
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        await eng.decide(SKILL, COLD)  # model alert, rules none: asked
        await eng.decide(SKILL, {"temperature_c": -5.0})  # model alert, rules warm -> alert: agreed
    conn = queries.open_readonly(cfg.config.data_dir)
    try:
        stage = next(r for r in reports.report(conn) if r["model"] == "fast")
        summary = reports.decision_summary(conn)
    finally:
        conn.close()
    assert (stage["beside_rules"], stage["disagreements"]) == (2, 1)
    assert summary == [{"skill": SKILL, "decisions": 2, "sources": {"rules": 1, "model": 1},
                        "fallback_reasons": {"disagreement": 1}, "asked": 1, "asked_share": 0.5, "asked_because": {"disagreement": 1}}]


async def test_what_applies_while_a_human_is_asked_is_guarded_and_never_itself_waiting(config_factory: Factory, node_key: NodeKey) -> None:
    # The rules say defrost, which waits for approval; an unsure model says shutdown: a human is asked
    # about the shutdown, and meanwhile not the unapproved defrost applies but approval.interim.
    rules = [{"name": "iced", "when": "temperature_c < 0.0", "action": "defrost"}, {"name": "all_good", "default": True, "action": "none"}]
    cfg = config_factory(model={"confidence": 0.5, "label": "critical"},
                         skill={"rules": rules, "uncertain": {"ask": ["low_confidence"]},
                                "cascade": [{"model": "fast", "min_confidence": 0.8, "map": {"critical": "shutdown"}}],
                                "approval": {"actions": ["defrost", "shutdown"], "interim": "alert"}})
    rec, _ = await decide(cfg, node_key, COLD)
    assert (rec["status"], rec["action"], rec["approval"]["requested_action"]) == ("pending_approval", "alert", "shutdown")
    # A guard that vetoes the rules' answer vetoes it as the interim too.
    guarded = config_factory(model={"confidence": 0.5, "label": "critical"},
                             skill={"rules": rules, "uncertain": {"ask": ["low_confidence"]},
                                    "cascade": [{"model": "fast", "min_confidence": 0.8, "map": {"critical": "shutdown"}}],
                                    "guards": [{"name": "no_defrost", "when": 'action == "defrost"', "action": "alert"}],
                                    "approval": {"actions": []}})
    rec, _ = await decide(guarded, node_key, COLD)
    assert (rec["status"], rec["action"], rec["guard"]) == ("pending_approval", "alert", "no_defrost")


def test_an_uncertain_interim_that_itself_waits_is_refused(config_factory: Factory) -> None:
    from agentd.errors import ConfigError

    with pytest.raises(ConfigError, match="itself waits for approval"):
        config_factory(skill={"uncertain": {"ask": ["low_confidence"], "interim": "shutdown"}})


async def test_a_card_that_does_not_match_its_pin_refuses_the_model(onnx_config: Callable[..., LoadedConfig], config_factory: Factory,
                                                                    node_key: NodeKey, tmp_path: Path) -> None:
    cfg = onnx_config()
    model = next(m for m in cfg.config.models if m.name == "freezer").model_dump(mode="json")
    pinned = config_factory(models=[{**model, "card_sha256": "0" * 64}], skill={
        "input": {"temperature_c": {"type": "number"}, "door_open_s": {"type": "number"}, "compressor_a": {"type": "number"}},
        "cascade": [{"model": "freezer", "min_confidence": 0.5}], "approval": {"actions": []}})
    rec, _ = await decide(pinned, node_key, {"temperature_c": -19.0, "door_open_s": 5.0, "compressor_a": 5.0})
    assert (rec["source"], rec["fallback_reason"]) == ("rules", "model_missing")
