"""Learning from labels on the real engine (SQLite, CEL, delay, ONNX and text stages): a stage
that answers wrongly is demoted and the rules take over, a shadow that is right is promoted,
text stages take labelled texts as examples, and calibration fits a temperature."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agentd.config.loader import LoadedConfig
from agentd.decision.engine import Engine
from agentd.state import queries
from agentd.trust.keys import NodeKey
from tests.conftest import MINILM

SKILL = "freezer"
COLD = {"temperature_c": -20.0}  # rules: all_good -> none; the delay model says warn -> alert
ROOT = Path(__file__).resolve().parent.parent.parent
Factory = Callable[..., LoadedConfig]
Wait = Callable[..., Awaitable[Any]]
AUTO = {"auto": True, "min_labels": 5}


# A text stage on the skill's note, with three examples, acting alone (tests/decision/test_label_writes.py uses it too).
READER = {"name": "reader", "backend": "embedding", "fields": ["note"], **MINILM,
          "examples": [{"text": "delivery being unloaded", "label": "none"}, {"text": "compressor is smoking", "label": "shutdown"},
                       {"text": "door left open", "label": "alert"}]}
READER_SKILL = {"cascade": [{"model": "reader", "min_confidence": 0.0}], "approval": {"actions": []}}


def states(eng: Engine) -> list[str]:
    return [s["state"] for s in eng.stage_state_list()]


async def test_a_stage_that_answers_wrongly_is_demoted_and_the_rules_take_over(config_factory: Factory, node_key: NodeKey, wait_until: Wait) -> None:
    cfg = config_factory(skill={"cascade": [{"model": "fast", "min_confidence": 0.8, "map": {"warn": "alert"}, "promote": AUTO}],
                                "approval": {"actions": []}})
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        for i in range(5):
            rec = await eng.decide(SKILL, COLD, event_id=f"e-{i}")
            assert rec["source"] == "model" and rec["action"] == "alert"  # the model's wrong answer acts
            await eng.label(rec["id"], "none", by="alice")  # an operator says the rules were right
        await wait_until(lambda: _async(states(eng) == ["shadow"]))
        after = await eng.decide(SKILL, COLD, event_id="e-after")
        audit = await eng.store.read(lambda c: [json.loads(b) for (b,) in c.execute("SELECT body FROM audit WHERE kind = 'stage_state'")])
    assert (after["source"], after["action"], after["fallback_reason"]) == ("rules", "none", "demoted")
    assert [s["outcome"] for s in after["stages"]] == []  # a demoted stage no longer runs in the acted cascade
    assert [(a["from"], a["to"], a["by"], a["evidence"]["labels"]) for a in audit] == [("acting", "shadow", "auto", 5)]
    assert audit[0]["evidence"]["stage_accuracy"] == 0.0 and audit[0]["evidence"]["rules_accuracy"] == 1.0
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as again:  # the state is stored: a restart keeps it
        assert states(again) == ["shadow"]
        assert (await again.decide(SKILL, COLD))["fallback_reason"] == "demoted"


async def test_fewer_labels_than_the_minimum_change_nothing(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(skill={"cascade": [{"model": "fast", "min_confidence": 0.8, "map": {"warn": "alert"}, "promote": AUTO}]})
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        for i in range(4):
            rec = await eng.decide(SKILL, COLD, event_id=f"e-{i}")
            await eng.label(rec["id"], "none", by="alice")
        assert states(eng) == ["acting"]


async def test_a_shadow_that_is_right_where_the_rules_are_wrong_is_promoted(config_factory: Factory, node_key: NodeKey, wait_until: Wait) -> None:
    cfg = config_factory(skill={"cascade": [{"model": "fast", "min_confidence": 0.8, "map": {"warn": "alert"}, "shadow": True, "promote": AUTO}],
                                "approval": {"actions": []}})
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        assert states(eng) == ["shadow"]
        for i in range(5):
            rec = await eng.decide(SKILL, COLD, event_id=f"e-{i}")
            assert rec["source"] == "rules" and rec["action"] == "none"
            await wait_until(lambda i=i: eng.store.read(lambda c: c.execute("SELECT COUNT(*) FROM shadow_answers").fetchone()[0] > i))
            await eng.label(rec["id"], "alert", by=("alice", "bob")[i % 2])  # the shadow's alert was right (two people)
        await wait_until(lambda: _async(states(eng) == ["acting"]))
        promoted = await eng.decide(SKILL, COLD, event_id="e-after")
    assert (promoted["source"], promoted["action"]) == ("model", "alert")


async def test_without_promote_auto_labels_never_move_a_stage(config_factory: Factory, node_key: NodeKey) -> None:
    async with Engine(loaded=config_factory(), key=node_key, run_handlers=False) as eng:
        for i in range(6):
            rec = await eng.decide(SKILL, COLD, event_id=f"e-{i}")
            await eng.label(rec["id"], "none", by="alice")
        assert states(eng) == ["acting"]
        await eng.set_stage_state(SKILL, 0, "shadow", by="bob")  # a person can still move it
        assert states(eng) == ["shadow"]


async def test_a_text_stage_learns_labelled_texts_now_and_after_a_restart(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(models=[READER], skill=READER_SKILL)
    note = {**COLD, "note": "the cat is in the cold room"}
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        first = await eng.decide(SKILL, note, event_id="n-1")
        taught = "alert" if first["action"] != "alert" else "none"  # a label the stage knows, not the one it said
        await eng.label(first["id"], taught, by="alice")
        await eng.label(first["id"], "defrost", by="alice")  # the latest label counts; defrost is no label of this stage
        await eng.label(first["id"], taught, by="alice")
        second = await eng.decide(SKILL, note, event_id="n-2")
    assert second["action"] == taught and second["stages"][0]["similarity"] >= 0.999
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as again:  # a fresh stage learns the stored labels at start
        third = await again.decide(SKILL, note, event_id="n-3")
    assert third["action"] == taught


async def test_calibration_fits_a_temperature_and_the_gate_reads_the_calibrated_confidence(config_factory: Factory, node_key: NodeKey) -> None:
    model = ROOT / "models" / "freezer_anomaly.int8.onnx"
    cfg = config_factory(
        models=[{"name": "freezer", "backend": "onnx", "path": str(model), "sha256": "aeb5a7fa971ea655338612e9a8f40f9b51fd278a47e0bd8d567a82101e8511da",
                 "inputs": ["temperature_c", "door_open_s", "compressor_a"], "labels": ["normal", "door_open", "icing", "failure"]}],
        skill={"input": {"temperature_c": {"type": "number"}, "door_open_s": {"type": "number"}, "compressor_a": {"type": "number"}},
               "cascade": [{"model": "freezer", "min_confidence": 0.8, "map": {"normal": "none", "door_open": "alert", "icing": "defrost", "failure": "shutdown"}}],
               "approval": {"actions": []}})
    door = {"temperature_c": -15.0, "door_open_s": 200.0, "compressor_a": 6.4}  # the model: door_open, very sure
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        for i in range(30):  # operators say it was right only a third of the time
            rec = await eng.decide(SKILL, {**door, "door_open_s": 200.0 + i}, event_id=f"d-{i}")
            assert rec["source"] == "model" and rec["confidence"] > 0.9
            await eng.label(rec["id"], "alert" if i % 3 == 0 else "none", by="alice")
        rows = await eng.calibrate(by="admin", min_labels=20)
        after = await eng.decide(SKILL, door, event_id="d-after")
        saved = json.loads(await eng.store.read(lambda c: queries.get_setting(c, "calibration")))
    row = next(r for r in rows if r["model"] == "freezer@1")
    assert row["fitted"] and row["temperature"] > 1.0 and row["ece_after"] < row["ece_before"]
    assert row["held_out"]["labels"] == 9 and saved["freezer@1"]["temperature"] == row["temperature"]
    stage = after["stages"][0]
    assert stage["raw_confidence"] > 0.9 and stage["confidence"] < stage["raw_confidence"] and stage["temperature"] == row["temperature"]
    assert (after["source"], after["fallback_reason"]) == ("rules", "low_confidence")  # the calibrated confidence no longer passes 0.8


async def _async(value: Any) -> Any:
    return value


# -- what the review found (the fixes hold) ----------------------------------------------


async def test_one_person_labels_cannot_promote_a_model(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(skill={"cascade": [{"model": "fast", "min_confidence": 0.8, "map": {"warn": "alert"}, "shadow": True, "promote": AUTO}],
                                "approval": {"actions": []}})
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        for i in range(8):
            rec = await eng.decide(SKILL, COLD, event_id=f"e-{i}")
            await _wait_shadows(eng, i + 1)
            await eng.label(rec["id"], "alert", by="alice")
        await _idle(eng)
        assert states(eng) == ["shadow"]


async def test_a_promoted_stage_is_judged_on_its_newest_labels_and_demoted(config_factory: Factory, node_key: NodeKey, wait_until: Wait) -> None:
    promote = {"auto": True, "min_labels": 5, "window": 5}
    cfg = config_factory(skill={"cascade": [{"model": "fast", "min_confidence": 0.8, "map": {"warn": "alert"}, "shadow": True, "promote": promote}],
                                "approval": {"actions": []}})
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        for i in range(5):  # right as a shadow: promoted
            rec = await eng.decide(SKILL, COLD, event_id=f"s-{i}")
            await _wait_shadows(eng, i + 1)
            await eng.label(rec["id"], "alert", by=("alice", "bob")[i % 2])
        await wait_until(lambda: _async(states(eng) == ["acting"]))
        acted = 0
        for i in range(5):  # then wrong while acting: its old shadow record must not keep it acting
            rec = await eng.decide(SKILL, COLD, event_id=f"a-{i}")
            acted += rec["source"] == "model"
            await eng.label(rec["id"], "none", by="alice")
            await _idle(eng)
        assert states(eng) == ["shadow"] and 3 <= acted < 5  # demoted once its newest 5 labels say the rules do better


async def test_a_corrected_label_replaces_the_example_it_taught(config_factory: Factory, node_key: NodeKey) -> None:
    reader = {"name": "reader", "backend": "embedding", "fields": ["note"], **MINILM,
              "examples": [{"text": "delivery being unloaded", "label": "none"}, {"text": "compressor is smoking", "label": "shutdown"},
                           {"text": "door left open", "label": "alert"}]}
    cfg = config_factory(models=[reader], skill={"cascade": [{"model": "reader", "min_confidence": 0.0}], "approval": {"actions": []}})
    note = {**COLD, "note": "strange humming from the back wall"}
    async with Engine(loaded=cfg, key=node_key, run_handlers=False) as eng:
        rec = await eng.decide(SKILL, note, event_id="n-1")
        await eng.label(rec["id"], "shutdown", by="alice")  # a mistake...
        await eng.label(rec["id"], "none", by="alice")  # ...corrected: the live stage must follow the correction
        stage = eng.stages["reader"]
        again = await eng.decide(SKILL, note, event_id="n-2")
    assert again["action"] == "none" and stage.example_count == 4


async def test_editing_shadow_in_the_config_resets_a_stored_state(config_factory: Factory, node_key: NodeKey) -> None:
    async with Engine(loaded=config_factory(), key=node_key, run_handlers=False) as eng:
        await eng.set_stage_state(SKILL, 0, "shadow", by="bob")
        await eng.set_stage_state(SKILL, 0, "acting", by="bob")  # stored: acting, made under `shadow: false`
    async with Engine(loaded=config_factory(), key=node_key, run_handlers=False) as same:
        assert states(same) == ["acting"]
    # An admin stops the model by editing the config: that must win over the stored state.
    edited = config_factory(skill={"cascade": [{"model": "fast", "min_confidence": 0.8, "map": {"warn": "alert"}, "shadow": True}]})
    async with Engine(loaded=edited, key=node_key, run_handlers=False) as changed:
        assert states(changed) == ["shadow"]


async def _wait_shadows(eng: Engine, n: int) -> None:
    for _ in range(500):
        if await eng.store.read(lambda c: c.execute("SELECT COUNT(*) FROM shadow_answers").fetchone()[0]) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {n} shadow answers stored")


async def _idle(eng: Engine) -> None:
    """Until the engine's background jobs (the stage reviews after labels) are done."""
    pending = [t for t in eng._background if not t.done()]
    if pending:
        await asyncio.wait(pending)
