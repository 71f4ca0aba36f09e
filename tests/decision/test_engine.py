"""agentd.engine with real parts: SQLite in tmp_path, delay and ONNX stages, CEL rules.

Timing assertions are loose behavioural bounds (a decision within its deadline plus 50 ms),
never benchmarks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agentd.config.loader import LoadedConfig
from agentd.decision.engine import Engine
from agentd.errors import InputError, NotFound
from agentd.mesh.wire import decision_wire
from agentd.state import queries
from agentd.trust.keys import NodeKey

SKILL = "freezer"
COLD = {"temperature_c": -20.0}
HOT = {"temperature_c": 5.0}
SLACK_MS = 50  # loose bound on deadline overshoot in tests (the budget itself is 5 ms p99)
DESIGN_FIELDS = {
    "id",
    "event_id",
    "node",
    "skill",
    "action",
    "status",
    "source",
    "model",
    "confidence",
    "fallback_reason",
    "guard",
    "latency_ms",
    "stages",
    "late_answer",
    "hlc",
    "created_at",
    "lifecycle",
    "inputs",
}
RULES_ONLY = {"cascade": []}
NO_APPROVAL = {"approval": {"actions": []}}
SHIPPED_MODEL = Path(__file__).resolve().parent.parent.parent / "models" / "freezer_anomaly.int8.onnx"
Factory = Callable[..., LoadedConfig]


def engine(cfg: LoadedConfig, key: NodeKey, **kw: Any) -> Engine:
    return Engine(loaded=cfg, key=key, **kw)


async def stored(eng: Engine, ident: str) -> dict[str, Any]:
    return await eng.store.read(lambda c: queries.get_decision(c, ident))


async def audit_kinds(eng: Engine, ref: str) -> list[str]:
    return [a["kind"] for a in await eng.store.read(lambda c: queries.audit_for(c, ref))]


async def decisions_count(eng: Engine) -> int:
    return int(await eng.store.read(lambda c: c.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]))


# -- the cascade -----------------------------------------------------------------------


async def test_model_accepted_when_fast_and_confident(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory()
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, COLD, event_id="evt-1")
        assert await stored(eng, "evt-1") == rec
        assert await audit_kinds(eng, rec["id"]) == ["decision"]
        verified = await eng.store.read(queries.verify_audit)
    assert set(rec) >= DESIGN_FIELDS
    assert (rec["action"], rec["status"], rec["source"], rec["fallback_reason"]) == ("alert", "decided", "model", None)
    assert rec["model"] == {"name": "fast", "version": "1", "sha256": None}
    assert rec["confidence"] == pytest.approx(0.95)
    assert [(s["model"], s["answer"], s["outcome"]) for s in rec["stages"]] == [("fast", "warn", "accepted")]
    assert rec["event_id"] == "evt-1" and rec["node"] == "test-node" and rec["skill"] == SKILL
    assert rec["lifecycle"]["stage"] == "dev" and rec["lifecycle"]["release"] == "test-1"
    assert rec["lifecycle"]["config_sha256"] == cfg.sha256
    assert rec["inputs"]["temperature_c"] == -20.0
    assert rec["latency_ms"] < 200 + SLACK_MS
    assert verified.ok


async def test_low_confidence_falls_back_to_rules(config_factory: Factory, node_key: NodeKey) -> None:
    async with engine(config_factory(model={"confidence": 0.5}), node_key) as eng:
        rec = await eng.decide(SKILL, COLD)
    assert (rec["action"], rec["source"], rec["fallback_reason"], rec["rule"]) == (
        "none",
        "rules",
        "low_confidence",
        "all_good",
    )
    assert rec["model"] is None and rec["confidence"] is None
    assert [(s["answer"], s["outcome"]) for s in rec["stages"]] == [("warn", "low_confidence")]


async def test_label_outside_the_actions_is_invalid_output(config_factory: Factory, node_key: NodeKey) -> None:
    async with engine(config_factory(model={"label": "self_destruct"}), node_key) as eng:
        rec = await eng.decide(SKILL, HOT)
    assert rec["fallback_reason"] == "invalid_output"
    assert rec["action"] == "alert"  # hot -> shutdown by the rules, pending approval with interim alert
    assert rec["status"] == "pending_approval" and rec["approval"]["requested_action"] == "shutdown"
    assert rec["stages"][0]["outcome"] == "invalid_output"


async def test_slow_model_times_out_and_rules_answer_within_the_deadline(
    config_factory: Factory, node_key: NodeKey
) -> None:
    cfg = config_factory(model={"delay_ms": 5000}, skill={"deadline_ms": 100})
    async with engine(cfg, node_key) as eng:
        t0 = time.monotonic()
        rec = await eng.decide(SKILL, COLD)
        elapsed_ms = (time.monotonic() - t0) * 1000
    assert (rec["source"], rec["fallback_reason"], rec["action"]) == ("rules", "timeout", "none")
    assert rec["stages"][0]["outcome"] == "timeout"
    assert rec["latency_ms"] < 100 + SLACK_MS
    assert elapsed_ms < 1000  # committed and returned long before the 5 s model would have answered


async def test_stage_timeout_ms_caps_a_stage_below_the_deadline(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(
        model={"delay_ms": 5000},
        skill={"deadline_ms": 1000, "cascade": [{"model": "fast", "timeout_ms": 30, "map": {"warn": "alert"}}]},
    )
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, COLD)
    assert rec["fallback_reason"] == "timeout"
    assert rec["latency_ms"] < 30 + SLACK_MS


async def test_decision_deadline_counts_from_receipt(config_factory: Factory, node_key: NodeKey) -> None:
    async with engine(config_factory(), node_key) as eng:
        rec = await eng.decide(SKILL, COLD, received=time.monotonic() - 0.5)  # queued 500 ms before we got to it
    assert rec["fallback_reason"] == "timeout" and rec["source"] == "rules"
    assert rec["latency_ms"] >= 500


async def test_late_answer_recorded_for_an_uncancellable_stage(
    config_factory: Factory, node_key: NodeKey, wait_until: Any
) -> None:
    cfg = config_factory(model={"delay_ms": 150, "cancellable": False}, skill={"deadline_ms": 40})
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, COLD)
        assert rec["late_answer"] is None and rec["fallback_reason"] == "timeout"

        async def late() -> Any:
            return (await stored(eng, rec["id"])).get("late_answer")

        answer = await wait_until(late)
        after = await stored(eng, rec["id"])
        kinds = await audit_kinds(eng, rec["id"])
        assert eng.counters["late_answers"] == 1
    assert answer["model"] == "fast" and answer["answer"] == "warn" and answer["latency_ms"] >= 100
    assert after["action"] == "none" and after["source"] == "rules"  # never acted on
    assert kinds == ["decision", "late_answer"]


async def test_cancellable_stage_leaves_no_late_answer(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(model={"delay_ms": 150}, skill={"deadline_ms": 40})
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, COLD)
        await asyncio.sleep(0.2)
        assert (await stored(eng, rec["id"])).get("late_answer") is None
        assert eng.counters["late_answers"] == 0


async def test_circuit_opens_after_n_timeouts_then_probes(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(
        model={"delay_ms": 5000, "circuit_failures": 2, "circuit_cooldown_s": 0.3}, skill={"deadline_ms": 80}
    )
    async with engine(cfg, node_key) as eng:
        reasons = [(await eng.decide(SKILL, COLD))["fallback_reason"] for _ in range(3)]
        status = await eng.status()
        open_rec = await eng.decide(SKILL, COLD)
        await asyncio.sleep(0.35)
        probe = await eng.decide(SKILL, COLD)  # the cool-down is over: one probe, which times out again
        after_probe = await eng.decide(SKILL, COLD)
    assert reasons == ["timeout", "timeout", "circuit_open"]
    assert status["models"][0]["circuit"] == "open"
    assert open_rec["latency_ms"] < 80  # an open circuit does not wait for the deadline
    assert open_rec["stages"][0]["outcome"] == "circuit_open"
    assert probe["fallback_reason"] == "timeout"
    assert after_probe["fallback_reason"] == "circuit_open"


async def test_overloaded_when_the_queue_wait_exceeds_the_budget(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(model={"delay_ms": 40}, skill={"deadline_ms": 150})
    async with engine(cfg, node_key) as eng:
        warm = await eng.decide(SKILL, COLD)  # teaches the stage its run time
        burst = await asyncio.gather(*(eng.decide(SKILL, COLD) for _ in range(12)))
    assert warm["source"] == "model"
    reasons = [r["fallback_reason"] for r in burst]
    assert "overloaded" in reasons
    assert any(r["source"] == "model" for r in burst)  # the head of the queue still got the model
    for r in burst:
        assert r["latency_ms"] < 150 + SLACK_MS
        if r["fallback_reason"] == "overloaded":
            assert r["stages"][0]["outcome"] == "overloaded" and r["source"] == "rules"


async def test_model_with_a_wrong_hash_is_missing_and_rules_decide(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(
        models=[
            {
                "name": "anomaly",
                "backend": "onnx",
                "path": str(SHIPPED_MODEL),
                "sha256": "0" * 64,
                "inputs": ["temperature_c", "door_open_s", "door_open_s"],
                "labels": ["normal", "door_open", "icing", "failure"],
            }
        ],
        skill={
            "cascade": [
                {
                    "model": "anomaly",
                    "map": {"normal": "none", "door_open": "alert", "icing": "defrost", "failure": "shutdown"},
                }
            ]
        },
    )
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, COLD)
        status = await eng.status()
        refused = await eng.store.read(lambda c: [a for a in queries.export_audit(c) if a["kind"] == "model_refused"])
    assert rec["fallback_reason"] == "model_missing" and rec["source"] == "rules"
    assert status["models"][0]["available"] is False
    assert "SHA-256 mismatch" in status["models"][0]["missing_reason"]
    assert refused and "SHA-256 mismatch" in refused[0]["body"]["reason"]


def nan_model(path: Path) -> str:
    """A real ONNX file whose 'probabilities' are all NaN (a corrupt or badly exported model)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 4])
    w = numpy_helper.from_array(np.zeros((1, 4), np.float32), "W")
    b = numpy_helper.from_array(np.full((1, 4), np.nan, np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["probabilities"])],
        "nan",
        [x],
        [y],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Regression: a NaN score used to reach the record, where canonical JSON refused it and decide() raised.
async def test_model_answering_nan_is_a_model_error_and_rules_decide(
    config_factory: Factory, node_key: NodeKey, tmp_path: Path
) -> None:
    path = tmp_path / "nan.onnx"
    digest = nan_model(path)
    cfg = config_factory(
        models=[
            {
                "name": "broken",
                "backend": "onnx",
                "path": str(path),
                "sha256": digest,
                "inputs": ["temperature_c"],
                "labels": ["none", "alert", "defrost", "shutdown"],
            }
        ],
        skill={"cascade": [{"model": "broken", "min_confidence": 0.5}]},
    )
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, COLD)
    assert (rec["source"], rec["fallback_reason"], rec["action"]) == ("rules", "model_error", "none")
    assert rec["stages"][0]["outcome"] == "model_error"


# Regression: CEL's ZeroDivisionError used to escape evaluate() and fail the whole decision.
async def test_a_rule_dividing_by_zero_never_stops_a_decision(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(
        skill={
            **RULES_ONLY,
            "input": {"cycles": {"type": "integer", "required": False}},
            "rules": [
                {"name": "duty", "when": "100 / cycles > 50", "action": "alert"},
                {"name": "all_good", "default": True, "action": "none"},
            ],
        }
    )
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, {**COLD, "cycles": 0})
    assert rec["action"] == "none" and "duty" in rec["rule_errors"][0]


async def test_erroring_rule_is_skipped_and_named_on_the_decision(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(
        skill={
            **RULES_ONLY,
            "rules": [
                {"name": "parse_note", "when": "int(note) > 3", "action": "shutdown"},
                {"name": "warm", "when": "temperature_c > -10.0", "action": "alert"},
                {"name": "all_good", "default": True, "action": "none"},
            ],
        }
    )
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, {"temperature_c": -5.0, "note": "n/a"})
    assert rec["action"] == "alert" and rec["rule"] == "warm"
    assert len(rec["rule_errors"]) == 1 and "parse_note" in rec["rule_errors"][0]


async def test_bad_input_is_refused_and_nothing_recorded(config_factory: Factory, node_key: NodeKey) -> None:
    async with engine(config_factory(), node_key) as eng:
        with pytest.raises(InputError, match=r"temperature_c: 99\.0 is above the maximum 60\.0"):
            await eng.decide(SKILL, {"temperature_c": 99})
        with pytest.raises(InputError, match="unknown field"):
            await eng.decide(SKILL, {"temperature_c": 1, "temp": 1})
        with pytest.raises(InputError, match="event id"):
            await eng.decide(SKILL, COLD, event_id="bad id")
        with pytest.raises(InputError, match="unknown skill 'nope'"):
            await eng.decide("nope", COLD)
        assert await decisions_count(eng) == 0


# -- modes and handlers -------------------------------------------------------------------


async def test_rules_only_mode(config_factory: Factory, node_key: NodeKey) -> None:
    async with engine(config_factory(daemon={"mode": "rules_only"}), node_key) as eng:
        rec = await eng.decide(SKILL, COLD)
    assert (rec["source"], rec["fallback_reason"], rec["stages"], rec["mode"]) == (
        "rules",
        "mode_rules_only",
        [],
        "rules_only",
    )


async def test_mode_set_at_run_time_persists_until_the_config_mode_changes(
    config_factory: Factory, node_key: NodeKey
) -> None:
    cfg = config_factory()
    async with engine(cfg, node_key) as eng:
        await eng.set_mode("rules_only", by="cli")
        with pytest.raises(InputError, match="unknown mode"):
            await eng.set_mode("turbo", by="cli")
    async with engine(cfg, node_key) as eng:
        assert eng.mode == "rules_only"
        assert (await eng.decide(SKILL, COLD))["fallback_reason"] == "mode_rules_only"
        modes = await eng.store.read(lambda c: [a["body"] for a in queries.export_audit(c) if a["kind"] == "mode"])
    assert modes == [{"from": "auto", "to": "rules_only", "by": "cli"}]
    async with engine(config_factory(daemon={"mode": "observe"}), node_key) as eng:
        assert eng.mode == "observe"  # the operator edited the config's mode: it wins


async def test_handlers_run_in_auto_mode_and_not_in_observe_mode(
    config_factory: Factory, node_key: NodeKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentd")
    async with engine(config_factory(), node_key) as eng:
        auto = await eng.decide(SKILL, COLD, event_id="auto-1")
    assert auto["action"] == "alert"
    assert any("action alert for event auto-1" in r.getMessage() for r in caplog.records)
    caplog.clear()
    async with engine(config_factory(daemon={"mode": "observe"}), node_key) as eng:
        observed = await eng.decide(SKILL, COLD, event_id="obs-1")
        assert await stored(eng, "obs-1") == observed
    assert (observed["action"], observed["status"], observed["mode"]) == ("alert", "decided", "observe")
    assert not any("for event obs-1" in r.getMessage() for r in caplog.records)


async def test_exec_handler_gets_the_decision_on_stdin(
    config_factory: Factory, node_key: NodeKey, tmp_path: Path, wait_until: Any
) -> None:
    out = tmp_path / "handler.json"
    script = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.stdin.read())"
    cfg = config_factory(
        skill={
            "handlers": [
                {"action": "alert", "type": "exec", "argv": [sys.executable, "-c", script, str(out)], "timeout_s": 10}
            ]
        }
    )
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, COLD)

        async def written() -> bool:
            return out.exists() and out.stat().st_size > 0

        await wait_until(written, limit_s=10)
    assert json.loads(out.read_text())["id"] == rec["id"]


async def test_run_handlers_false_runs_none(config_factory: Factory, node_key: NodeKey, tmp_path: Path) -> None:
    out = tmp_path / "handler.json"
    cfg = config_factory(
        skill={
            "handlers": [
                {
                    "action": "alert",
                    "type": "exec",
                    "argv": [sys.executable, "-c", "open(__import__('sys').argv[1], 'w')", str(out)],
                }
            ]
        }
    )
    async with engine(cfg, node_key, run_handlers=False) as eng:
        await eng.decide(SKILL, COLD)
    assert not out.exists()


async def test_manual_mode_makes_every_action_pending(config_factory: Factory, node_key: NodeKey) -> None:
    async with engine(config_factory(daemon={"mode": "manual"}, model={"confidence": 0.5}), node_key) as eng:
        quiet = await eng.decide(SKILL, COLD)  # rules: none
        warm = await eng.decide(SKILL, {"temperature_c": -5.0})  # rules: alert (the interim itself)
        waiting = await eng.store.read(queries.pending_approvals)
    for rec, requested in ((quiet, "none"), (warm, "alert")):
        assert rec["status"] == "pending_approval" and rec["action"] == "alert"
        assert rec["approval"]["requested_action"] == requested
    assert len(waiting) == 2


# -- approvals -------------------------------------------------------------------------------


async def test_approval_approve(config_factory: Factory, node_key: NodeKey, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agentd")
    async with engine(config_factory(skill=RULES_ONLY), node_key) as eng:
        t_wall = time.time()
        rec = await eng.decide(SKILL, HOT, event_id="hot-1")
        assert (rec["status"], rec["action"], rec["rule"]) == ("pending_approval", "alert", "hot")
        assert rec["approval"]["requested_action"] == "shutdown" and rec["approval"]["interim_action"] == "alert"
        assert rec["approval"]["expires_at"] == pytest.approx(t_wall + 900, abs=2)
        with pytest.raises(NotFound, match="no decision with id 'hot-1'"):
            await eng.approve("hot-1", by="alice")  # an event id names no decision to approve (issue 15)
        approved = await eng.approve(rec["id"][:8], by="alice")  # a unique prefix of 8+ characters of the decision id
        again = await stored(eng, rec["id"])
        kinds = await audit_kinds(eng, rec["id"])
        with pytest.raises(NotFound, match="not pending"):
            await eng.approve(rec["id"], by="bob")
        with pytest.raises(NotFound, match="not pending"):
            await eng.reject(rec["id"], by="bob")
        assert await eng.store.read(queries.pending_approvals) == []
        verified = await eng.store.read(queries.verify_audit)
    assert (approved["status"], approved["action"], approved["source"]) == ("approved", "shutdown", "human")
    assert approved["approval"]["resolved_by"] == "alice"
    assert again["status"] == "approved" and again["action"] == "shutdown"
    assert kinds == ["decision", "approval", "label"]  # an approval is a label of the requested action
    assert any("action shutdown for event hot-1" in r.getMessage() for r in caplog.records)
    assert verified.ok


async def test_approval_reject_applies_on_reject(config_factory: Factory, node_key: NodeKey) -> None:
    async with engine(config_factory(skill={**RULES_ONLY, "approval": {"on_reject": "none"}}), node_key) as eng:
        rec = await eng.decide(SKILL, HOT)
        rejected = await eng.reject(rec["id"], by="bob", reason="sensor glitch")
        with pytest.raises(NotFound):
            await eng.approve(rec["id"], by="alice")
    assert (rejected["status"], rejected["action"]) == ("rejected", "none")
    assert rejected["approval"]["reason"] == "sensor glitch"


async def test_approval_expires_to_on_timeout(config_factory: Factory, node_key: NodeKey, wait_until: Any) -> None:
    cfg = config_factory(skill={**RULES_ONLY, "approval": {"timeout_s": 0.3, "on_timeout": "defrost"}})
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, HOT)

        async def expired() -> Any:
            r = await stored(eng, rec["id"])
            return r if r["status"] == "expired" else None

        done = await wait_until(expired)
        with pytest.raises(NotFound, match="not pending"):
            await eng.approve(rec["id"], by="alice")
        kinds = await audit_kinds(eng, rec["id"])
    assert done["action"] == "defrost" and done["approval"]["resolved_by"] == "timeout"
    assert done["approval"]["resolved_at"] >= rec["approval"]["expires_at"]
    assert kinds == ["decision", "approval"]


async def test_approving_a_decision_that_needed_none_is_refused(config_factory: Factory, node_key: NodeKey) -> None:
    async with engine(config_factory(), node_key) as eng:
        rec = await eng.decide(SKILL, COLD)
        with pytest.raises(NotFound, match="never needed approval"):
            await eng.approve(rec["id"], by="alice")
        with pytest.raises(NotFound, match="no decision"):
            await eng.approve("no-such-decision", by="alice")


async def test_pending_approval_rearmed_after_reopen_at_its_original_time(
    config_factory: Factory, node_key: NodeKey, wait_until: Any
) -> None:
    cfg = config_factory(skill={**RULES_ONLY, "approval": {"timeout_s": 0.8}})
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, HOT)
    expires_at = rec["approval"]["expires_at"]
    await asyncio.sleep(0.4)  # the daemon is down for a while
    reopened_at = time.time()
    async with engine(cfg, node_key) as eng:

        async def expired() -> Any:
            r = await stored(eng, rec["id"])
            return r if r["status"] == "expired" else None

        done = await wait_until(expired, limit_s=5)
        kinds = await audit_kinds(eng, rec["id"])
    resolved_at = done["approval"]["resolved_at"]
    assert resolved_at >= expires_at - 0.01
    assert resolved_at < expires_at + 0.3  # not re-armed from the restart (that would be >= reopened_at + 0.8)
    assert reopened_at + 0.8 > expires_at + 0.3
    assert kinds == ["decision", "approval"]  # expired once


async def test_approval_that_expired_while_down_expires_at_start(
    config_factory: Factory, node_key: NodeKey, wait_until: Any
) -> None:
    cfg = config_factory(skill={**RULES_ONLY, "approval": {"timeout_s": 0.25}})
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, HOT)
    conn = queries.open_readonly(cfg.config.data_dir)
    assert [p["decision_id"] for p in queries.pending_approvals(conn)] == [rec["id"]]  # closed while pending
    conn.close()
    await asyncio.sleep(0.4)
    async with engine(cfg, node_key) as eng:
        t_open = time.time()

        async def expired() -> Any:
            r = await stored(eng, rec["id"])
            return r if r["status"] == "expired" else None

        done = await wait_until(expired)
        pending = await eng.store.read(queries.pending_approvals)
        kinds = await audit_kinds(eng, rec["id"])
    assert done["approval"]["resolved_at"] - t_open < 0.5
    assert pending == []
    assert kinds == ["decision", "approval"]


async def test_decided_approvals_are_not_rearmed(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(skill={**RULES_ONLY, "approval": {"timeout_s": 0.2}})
    async with engine(cfg, node_key) as eng:
        rec = await eng.decide(SKILL, HOT)
        await eng.approve(rec["id"], by="alice")
    await asyncio.sleep(0.3)
    async with engine(cfg, node_key) as eng:
        await asyncio.sleep(0.05)
        final = await stored(eng, rec["id"])
        kinds = await audit_kinds(eng, rec["id"])
    assert final["status"] == "approved"
    assert kinds == ["decision", "approval", "label"]  # approved once (and labelled), never expired after


# -- exactly one decision per event id ---------------------------------------------------------


async def test_concurrent_duplicates_make_exactly_one_decision(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(model={"delay_ms": 20})
    async with engine(cfg, node_key) as eng:
        recs = await asyncio.gather(*(eng.decide(SKILL, COLD, event_id="dup-1") for _ in range(20)))
        later = await eng.decide(SKILL, HOT, event_id="dup-1")  # a retry with other data changes nothing
        assert await decisions_count(eng) == 1
        assert await audit_kinds(eng, recs[0]["id"]) == ["decision"]
        assert eng.counters["duplicates"] == 20
    assert len({r["id"] for r in recs}) == 1
    assert later == recs[0]
    async with engine(cfg, node_key) as eng:  # after a restart the id is still known
        again = await eng.decide(SKILL, COLD, event_id="dup-1")
        also = await asyncio.gather(*(eng.decide(SKILL, COLD, event_id="dup-1") for _ in range(5)))
        assert await decisions_count(eng) == 1
        outbox = await eng.store.read(lambda c: c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    assert again["id"] == recs[0]["id"] and {r["id"] for r in also} == {recs[0]["id"]}
    assert outbox == 0  # mqtt is disabled in these tests: nothing queued


async def test_only_a_callers_event_ids_are_remembered(config_factory: Factory, node_key: NodeKey) -> None:
    """The in-memory id cache holds ids a caller may send again; an id made here never comes again
    (a simulator or a socket event without an id must not fill the cache)."""
    async with engine(config_factory(skill=RULES_ONLY), node_key) as eng:
        made = [await eng.decide(SKILL, COLD) for _ in range(5)]
        given = await eng.decide(SKILL, COLD, event_id="given-1")
        assert list(eng._recent) == ["given-1"]
        assert await eng.decide(SKILL, HOT, event_id="given-1") == given  # the repeat answered from the cache's read
        assert await eng.decide(SKILL, HOT, event_id=made[0]["event_id"]) == made[0]  # a made id, if sent: the store knows it
        assert await decisions_count(eng) == 6
        assert eng.counters["duplicates"] == 2


async def test_decision_queues_a_signed_envelope_when_mqtt_is_enabled(
    config_factory: Factory, node_key: NodeKey
) -> None:
    from agentd.trust.keys import verify

    cfg = config_factory(mqtt={"enabled": True}, skill=RULES_ONLY)
    async with engine(cfg, node_key, outbound=decision_wire(cfg.config, node_key)) as eng:
        rec = await eng.decide(SKILL, HOT)
        rows = await eng.store.read(
            lambda c: c.execute("SELECT topic, payload, qos FROM outbox ORDER BY seq").fetchall()
        )
    topics = [r[0] for r in rows]
    assert topics == [
        "agentd/v1/test-fleet/nodes/test-node/decisions",
        "agentd/v1/test-fleet/nodes/test-node/approvals",
    ]
    env = json.loads(rows[0][1])
    assert env["body"] == rec and env["kind"] == "decision" and env["v"] == 2 and env["fleet"] == "test-fleet" and env["node"] == "test-node"
    sig = env.pop("sig")
    from agentd.trust.canonical import canonical

    assert verify(node_key.public_b64, canonical(env), sig)


# -- guards ------------------------------------------------------------------------------------


FLEET_GUARD = {
    "name": "fleet_shutdown_limit",
    "when": 'action == "shutdown" && fleet_count("shutdown", 600) >= 2',
    "action": "alert",
}


async def test_guard_replaces_the_action_and_names_itself(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(skill={**RULES_ONLY, **NO_APPROVAL, "guards": [FLEET_GUARD]})
    async with engine(cfg, node_key) as eng:
        recs = [await eng.decide(SKILL, HOT) for _ in range(3)]
    assert [r["action"] for r in recs] == ["shutdown", "shutdown", "alert"]
    assert [r["guard"] for r in recs] == [None, None, "fleet_shutdown_limit"]
    assert recs[2]["source"] == "rules" and recs[2]["rule"] == "hot"  # source stays


async def test_guard_applies_to_model_answers_and_reads_fleet_values(
    config_factory: Factory, node_key: NodeKey
) -> None:
    guard = {
        "name": "maintenance",
        "when": 'fleet_value("maintenance/test-node") == true && action != "none"',
        "action": "none",
    }
    async with engine(config_factory(skill={"guards": [guard]}), node_key) as eng:
        before = await eng.decide(SKILL, COLD)
        eng.fleet.set_value("maintenance/test-node", True)
        during = await eng.decide(SKILL, COLD)
    assert (before["action"], before["guard"]) == ("alert", None)
    assert (during["action"], during["source"], during["guard"]) == ("none", "model", "maintenance")


async def test_guard_result_goes_through_approval(config_factory: Factory, node_key: NodeKey) -> None:
    guard = {"name": "escalate", "when": 'action == "alert" && temperature_c > 0.0', "action": "shutdown"}
    async with engine(config_factory(skill={"guards": [guard]}), node_key) as eng:
        rec = await eng.decide(SKILL, HOT)
    assert rec["guard"] == "escalate" and rec["status"] == "pending_approval"
    assert rec["approval"]["requested_action"] == "shutdown" and rec["action"] == "alert"


async def test_erroring_guard_is_named_and_the_action_stands(config_factory: Factory, node_key: NodeKey) -> None:
    guard = {"name": "limit", "when": 'fleet_value("limit") > 1', "action": "none"}
    async with engine(config_factory(skill={"guards": [guard]}), node_key) as eng:
        rec = await eng.decide(SKILL, COLD)
    assert rec["action"] == "alert" and rec["guard"] is None
    assert "limit" in rec["rule_errors"][0]


# Regression: approved actions used to be invisible to fleet_count, so this guard could never fire.
async def test_approved_shutdowns_count_for_fleet_guards(config_factory: Factory, node_key: NodeKey) -> None:
    async with engine(config_factory(skill={**RULES_ONLY, "guards": [FLEET_GUARD]}), node_key) as eng:
        for _ in range(2):
            rec = await eng.decide(SKILL, HOT)
            await eng.approve(rec["id"], by="alice")
        third = await eng.decide(SKILL, HOT)
    assert third["guard"] == "fleet_shutdown_limit"


async def test_activate_model_switches_a_stage_and_holds_across_restarts(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(models=[
        {"name": "fast", "backend": "delay", "delay_ms": 1, "label": "warn", "confidence": 0.95},
        {"name": "canary", "backend": "delay", "delay_ms": 1, "label": "defrost", "confidence": 0.9, "version": "2"},
    ])
    async with engine(cfg, node_key) as eng:
        assert (await eng.decide(SKILL, COLD))["model"]["name"] == "fast"
        result = await eng.activate_model(SKILL, 0, "canary", by="operator:alice")
        assert result == {"skill": SKILL, "stage": 0, "model": "canary", "version": "2"}
        rec = await eng.decide(SKILL, COLD)
        assert rec["model"]["name"] == "canary" and rec["action"] == "defrost"
        with pytest.raises(InputError, match="no stage 3"):
            await eng.activate_model(SKILL, 3, "canary", by="x")
    async with engine(cfg, node_key) as eng:  # persisted while the config is the same
        assert (await eng.decide(SKILL, COLD))["model"]["name"] == "canary"
        kinds = await eng.store.read(lambda c: [k for (k,) in c.execute("SELECT kind FROM audit WHERE kind = 'model_activated'")])
    assert kinds == ["model_activated"]


async def test_many_due_approvals_expire_together_in_a_few_commits(config_factory: Factory, node_key: NodeKey, wait_until: Any) -> None:
    # One at a time, each expiry waited for its own read and commit: under load the backlog grew.
    cfg = config_factory(skill={**RULES_ONLY, "approval": {"timeout_s": 0.5, "on_timeout": "defrost"}})
    async with engine(cfg, node_key) as eng:
        recs = [await eng.decide(SKILL, HOT) for _ in range(300)]
        commits_before = eng.store._writer.commits

        async def all_expired() -> Any:
            pending = await eng.store.read(queries.pending_approvals)
            return True if not pending else None

        await wait_until(all_expired, limit_s=30)
        commits = eng.store._writer.commits - commits_before
        done = [await stored(eng, r["id"]) for r in recs]
    assert all(d["status"] == "expired" and d["action"] == "defrost" for d in done)
    assert commits < 30, f"300 expiries took {commits} commits"


async def test_an_answer_ready_at_the_deadline_stands_though_the_loop_was_late(config_factory: Factory, node_key: NodeKey) -> None:
    # The stage answers at once, but the event loop is busy (here: blocked) past the deadline, so the
    # deadline's timer and the hand-back run in the same turn: the answer was in time and is used.
    cfg = config_factory(model={"delay_ms": 0, "circuit_failures": 1}, skill={"deadline_ms": 60})
    async with engine(cfg, node_key) as eng:
        decision = asyncio.create_task(eng.decide(SKILL, COLD))
        await asyncio.sleep(0)  # the decision starts and calls the stage
        time.sleep(0.15)  # noqa: ASYNC251 - a busy event loop, on purpose
        rec = await decision
        status = await eng.status()
    assert rec["source"] == "model" and rec["fallback_reason"] is None
    assert status["models"][0]["circuit"] == "closed"


async def test_calls_queued_behind_a_hung_model_open_its_circuit(config_factory: Factory, node_key: NodeKey) -> None:
    cfg = config_factory(model={"delay_ms": 2000, "cancellable": False, "circuit_failures": 3}, skill={"deadline_ms": 60})
    async with engine(cfg, node_key) as eng:
        burst = await asyncio.gather(*(eng.decide(SKILL, COLD) for _ in range(4)))
        status = await eng.status()
        after = await eng.decide(SKILL, COLD)
    assert [r["fallback_reason"] for r in burst] == ["timeout"] * 4  # one running, three waiting behind it
    assert status["models"][0]["circuit"] == "open" and after["fallback_reason"] == "circuit_open"


async def test_calls_late_only_through_load_do_not_open_the_circuit(config_factory: Factory, node_key: NodeKey) -> None:
    # Each call takes 25 ms and is in time when it runs; a burst of them waits its turn in the
    # stage's queue past the deadline. That is load, not a failing model.
    cfg = config_factory(model={"delay_ms": 25, "circuit_failures": 2}, skill={"deadline_ms": 100})
    async with engine(cfg, node_key) as eng:
        burst = await asyncio.gather(*(eng.decide(SKILL, COLD) for _ in range(8)))
        status = await eng.status()
    reasons = [r["fallback_reason"] for r in burst]
    assert reasons.count(None) >= 2 and "timeout" in reasons  # the head of the queue answered, the tail was too late
    assert status["models"][0]["circuit"] == "closed"
