"""Engine.label and the labels approvals and rejections make, on a real Engine, SQLite and audit trail;
the export read back by `agentd eval`'s own parser."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentd.config.loader import LoadedConfig
from agentd.decision.engine import Engine
from agentd.errors import InputError, NotFound
from agentd.ops.evaluate import read_items
from agentd.state import labels, queries
from agentd.trust.keys import NodeKey

SKILL = "freezer"
COLD = {"temperature_c": -20.0}
HOT = {"temperature_c": 5.0}
RULES_ONLY = {"cascade": []}
Factory = Callable[..., LoadedConfig]


async def labels_of(eng: Engine, decision_id: str) -> list[dict[str, Any]]:
    return await eng.store.read(lambda c: labels.for_decision(c, decision_id))


async def audit_kinds(eng: Engine, ref: str) -> list[str]:
    return [a["kind"] for a in await eng.store.read(lambda c: queries.audit_for(c, ref))]


async def test_a_label_is_recorded_audited_and_handed_to_the_hook(config_factory: Factory, node_key: NodeKey) -> None:
    heard: list[tuple[str, str]] = []
    async with Engine(loaded=config_factory(), key=node_key) as eng:
        eng._on_label = lambda record, action: heard.append((record["id"], action))  # type: ignore[method-assign]
        rec = await eng.decide(SKILL, COLD, event_id="cold-1")
        assert rec["action"] == "alert"  # the model's answer
        first = await eng.label("cold-1", "none", by="alice", note="the door was shut")  # by event id
        second = await eng.label(rec["id"], "defrost", by="bob")
        stored = await labels_of(eng, rec["id"])
        kinds = await audit_kinds(eng, rec["id"])
        after = await eng.store.read(lambda c: queries.get_decision(c, rec["id"]))
        verified = await eng.store.read(queries.verify_audit)
    assert (first["action"], first["source"], first["by"], first["note"]) == ("none", "operator", "alice", "the door was shut")
    assert [s["action"] for s in stored] == ["none", "defrost"] and stored[-1] == second
    assert heard == [(rec["id"], "none"), (rec["id"], "defrost")]
    assert kinds == ["decision", "label", "label"]
    assert after["action"] == "alert" and after["status"] == "decided"  # a label changes nothing the decision did
    assert verified.ok


async def test_a_bad_label_is_refused_and_nothing_is_written(config_factory: Factory, node_key: NodeKey) -> None:
    async with Engine(loaded=config_factory(), key=node_key) as eng:
        rec = await eng.decide(SKILL, COLD)
        with pytest.raises(InputError, match=r"'warm' is not an action of skill freezer \(actions: none, alert, defrost, shutdown\)"):
            await eng.label(rec["id"], "warm", by="alice")
        with pytest.raises(NotFound, match="no decision"):
            await eng.label("no-such-decision", "none", by="alice")
        with pytest.raises(InputError, match="at most 500"):
            await eng.label(rec["id"], "none", by="alice", note="x" * 501)
        with pytest.raises(InputError, match="1 to 64"):
            await eng.label(rec["id"], "none", by="a" * 65)
        assert await labels_of(eng, rec["id"]) == []
        assert await audit_kinds(eng, rec["id"]) == ["decision"]


async def test_a_failing_hook_does_not_undo_the_label(config_factory: Factory, node_key: NodeKey) -> None:
    def broken(record: dict[str, Any], action: str) -> None:
        raise RuntimeError("learning failed")

    async with Engine(loaded=config_factory(), key=node_key) as eng:
        eng._on_label = broken  # type: ignore[method-assign]
        rec = await eng.decide(SKILL, COLD)
        row = await eng.label(rec["id"], "none", by="alice")
        assert [s["id"] for s in await labels_of(eng, rec["id"])] == [row["id"]]


async def test_an_approval_is_a_label_of_the_requested_action(config_factory: Factory, node_key: NodeKey) -> None:
    heard: list[str] = []
    async with Engine(loaded=config_factory(skill=RULES_ONLY), key=node_key) as eng:
        eng._on_label = lambda record, action: heard.append(f"{record['status']}:{action}")  # type: ignore[method-assign]
        rec = await eng.decide(SKILL, HOT)
        assert rec["status"] == "pending_approval" and rec["approval"]["requested_action"] == "shutdown"
        await eng.approve(rec["id"], by="alice")
        stored = await labels_of(eng, rec["id"])
        kinds = await audit_kinds(eng, rec["id"])
        verified = await eng.store.read(queries.verify_audit)
    assert [(s["action"], s["source"], s["by"]) for s in stored] == [("shutdown", "approval", "alice")]
    assert kinds == ["decision", "approval", "label"]
    assert heard == ["approved:shutdown"]
    assert verified.ok


async def test_a_rejection_naming_the_right_action_applies_it_and_is_a_label(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(skill={**RULES_ONLY, "approval": {"on_reject": "none"}})
    async with Engine(loaded=cfg, key=node_key) as eng:
        rec = await eng.decide(SKILL, HOT)
        with pytest.raises(InputError, match="not an action of skill freezer"):
            await eng.reject(rec["id"], by="bob", action="reboot")
        with pytest.raises(InputError, match="approve the decision instead"):
            await eng.reject(rec["id"], by="bob", action="shutdown")
        assert (await eng.store.read(lambda c: queries.get_decision(c, rec["id"])))["status"] == "pending_approval"
        rejected = await eng.reject(rec["id"], by="bob", reason="it needs a defrost, not a shutdown", action="defrost")
        stored = await labels_of(eng, rec["id"])
        plain = await eng.decide(SKILL, {"temperature_c": 6.0})
        kept = await eng.reject(plain["id"], by="bob", reason="sensor glitch")  # no action: on_reject, and no label
        plain_labels = await labels_of(eng, plain["id"])
        verified = await eng.store.read(queries.verify_audit)
    assert (rejected["status"], rejected["action"]) == ("rejected", "defrost")  # instead of on_reject's none
    assert [(s["action"], s["source"], s["by"], s["note"]) for s in stored] == [
        ("defrost", "rejection", "bob", "it needs a defrost, not a shutdown")]
    assert (kept["action"], plain_labels) == ("none", [])
    assert verified.ok


async def test_the_export_reads_back_as_an_eval_set(config_factory: Factory, node_key: NodeKey, tmp_path: Path) -> None:
    cfg = config_factory(skill=RULES_ONLY)
    async with Engine(loaded=cfg, key=node_key) as eng:
        cold = await eng.decide(SKILL, {"temperature_c": -20.0, "note": "all quiet"}, event_id="night-1")
        warm = await eng.decide(SKILL, {"temperature_c": -5.0, "door_open_s": 120}, event_id="night-2")
        hot = await eng.decide(SKILL, HOT, event_id="night-3")
        await eng.decide(SKILL, COLD, event_id="night-4")  # never labelled: not exported
        await eng.label(cold["id"], "alert", by="alice")
        await eng.label(cold["id"], "none", by="alice")  # a correction: the latest counts
        await eng.label(warm["id"], "defrost", by="alice")
        await eng.approve(hot["id"], by="bob")
        lines = await eng.store.read(lambda c: list(labels.export(c)))
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    items = read_items(path, cfg.config)
    assert [(i.id, i.skill, i.label) for i in items] == [("night-1", SKILL, "none"), ("night-2", SKILL, "defrost"),
                                                        ("night-3", SKILL, "shutdown")]
    assert [i.fields for i in items] == [cold["inputs"], warm["inputs"], hot["inputs"]]  # the decisions' inputs, as decided
    assert items[0].fields["note"] == "all quiet" and items[1].fields["door_open_s"] == 120
