"""The LLM stage inside the real daemon: Gemma 3 270M end to end, shadow stages and `agentd report`,
deadlines under a queue, and a daemon without llama-cpp-python."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.config.loader import parse_config
from agentd.decision.engine import Engine
from agentd.trust.keys import create_key
from tests.integration.conftest import REPO, DaemonProc, cli, freezer_config

GEMMA = REPO / "models" / "gemma-3-270m-q4_k_m.gguf"


def _example_llm_model() -> dict[str, Any]:
    """The example config's request_llm model, with its path made absolute."""
    raw = yaml.safe_load((REPO / "config" / "agentd.yaml").read_text())
    model = next(m for m in raw["models"] if m["name"] == "request_llm")
    return {**model, "path": str(GEMMA)}


def _example_request_skill(**update: Any) -> dict[str, Any]:
    """The example's request skill with the LLM as its only stage (these tests are about the LLM stage)."""
    raw = yaml.safe_load((REPO / "config" / "agentd.yaml").read_text())
    skill = next(s for s in raw["skills"] if s["name"] == "operator_request")
    skill["cascade"] = [s for s in skill["cascade"] if s["model"] == "request_llm"]
    return {**skill, **update}


def _need_gemma() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llm extra) is not installed")
    if not GEMMA.is_file():
        if os.environ.get("AGENTD_REQUIRE_LLM") == "1":
            pytest.fail(f"{GEMMA} is missing; scripts/setup.sh assembles it (python scripts/get_gemma.py)")
        pytest.skip("Gemma 3 270M not assembled (python scripts/get_gemma.py)")


def _start(tmp_path: Path, cfg: dict[str, Any]) -> DaemonProc:
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    d = DaemonProc(config_path=path, data_dir=Path(cfg["node"]["data_dir"]))
    d.start(timeout=120)
    return d


def test_gemma_decides_end_to_end_through_the_daemon(tmp_path: Path) -> None:
    _need_gemma()
    data = tmp_path / "data"
    data.mkdir()
    cfg = freezer_config(data)
    cfg["models"].append(_example_llm_model())
    cfg["skills"].append(_example_request_skill(deadline_ms=20_000))  # the model's answer, not the machine's speed, is under test
    cfg["skills"][-1]["cascade"][0]["min_confidence"] = 0.0
    d = _start(tmp_path, cfg)
    try:
        st = d.request({"op": "status"})["result"]
        llm = next(m for m in st["models"] if m["name"] == "request_llm")
        assert llm["available"] and llm["sha256"] == cfg["models"][-1]["sha256"]
        for text in ("There is smoke coming out of the fan in bay 2", "Please bring more gloves to dock 1"):
            r = d.request({"op": "submit", "skill": "operator_request", "data": {"text": text}})["result"]
            assert r["source"] == "model", r
            stage = r["stages"][0]
            assert stage["model"] == "request_llm" and stage["outcome"] == "accepted"
            assert r["action"] in ("ignore", "restock", "maintenance", "escalate")
            assert set(stage["scores"]) == {"ignore", "restock", "maintenance", "escalate"}
            assert sum(stage["scores"].values()) == pytest.approx(1.0, abs=1e-3)
            assert 0 <= stage["margin"] <= 1 and "uncalibrated" in stage  # calibrate: true in the example
            assert r["model"]["name"] == "request_llm" and r["model"]["version"] == "gemma3-270m-q4km"
        assert d.stop() == 0
        verify = cli(d.config_path, "audit", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        d.stop()


def test_daemon_without_llama_cpp_decides_by_rules_and_says_why(tmp_path: Path) -> None:
    # A package that fails to import is exactly what a box without the llm extra sees.
    fake = tmp_path / "nollama" / "llama_cpp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'llama_cpp'\")\n")
    data = tmp_path / "data"
    data.mkdir()
    cfg = freezer_config(data)
    cfg["models"].append(_example_llm_model())
    cfg["skills"].append(_example_request_skill())
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    d = DaemonProc(config_path=path, data_dir=data)
    d.start(env={"PYTHONPATH": f"{fake.parent}:{REPO}"})
    try:
        r = d.request({"op": "submit", "skill": "operator_request", "data": {"text": "smoke in bay 2"}})["result"]
        assert (r["action"], r["source"], r["fallback_reason"]) == ("escalate", "rules", "model_missing")
        out = cli(path, "status")
        assert "request_llm" in out.stdout and "MISSING" in out.stdout
        assert "pip install 'agentd[llm]'" in out.stdout
    finally:
        d.stop()


def test_shadow_stages_are_recorded_never_acted_on_and_reported(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llm extra) is not installed")
    from tests.tinygguf import write_tiny_gguf

    tiny = tmp_path / "tiny.gguf"
    sha = write_tiny_gguf(tiny)
    data = tmp_path / "data"
    data.mkdir()
    cfg = freezer_config(data)
    cfg["models"] += [
        {"name": "always_shutdown", "backend": "delay", "delay_ms": 1, "label": "shutdown", "confidence": 0.99},
        {"name": "tiny_llm", "backend": "llama_cpp", "path": str(tiny), "sha256": sha, "version": "tiny-1",
         "labels": ["none", "alert", "defrost", "shutdown"], "n_ctx": 512},
    ]
    skill = cfg["skills"][0]
    skill["cascade"] += [{"model": "always_shutdown", "shadow": True}, {"model": "tiny_llm", "shadow": True}]
    d = _start(tmp_path, cfg)
    normal = {"temperature_c": -20.0, "door_open_s": 5.0, "compressor_a": 5.0}
    try:
        records = []
        for _ in range(12):
            records.append(d.request({"op": "submit", "skill": "freezer_health", "data": normal})["result"])
            time.sleep(0.05)  # shadows sample the events that find their worker idle
        assert all(r["action"] == "none" for r in records)  # the shadow's "shutdown" was never acted on
        assert all(len(r["stages"]) == 1 for r in records)  # shadows are not part of the acted trace
    finally:
        assert d.stop() == 0
    assert json.loads(cli(d.config_path, "report", "--json", "--stage", "prod").stdout)["stages"] == []
    out = cli(d.config_path, "report", "--json", "--stage", "canary", "--release", "it-1")
    assert out.returncode == 0, out.stderr
    rows = {(r["model"], r["role"]): r for r in json.loads(out.stdout)["stages"]}
    always = rows[("always_shutdown", "shadow")]
    assert always["calls"] == 12 and always["answered"] >= 1 and always["agreement"] == 0.0
    assert set(always["outcomes"]) <= {"accepted", "overloaded"} and always["stage"] == "canary" and always["release"] == "it-1"
    llm = rows[("tiny_llm", "shadow")]
    assert llm["calls"] == 12 and llm["version"] == "tiny-1" and llm["answered"] >= 1
    assert llm["latency_ms"]["p50"] is not None and llm["confidence"]["p50"] is not None
    acted = rows[("freezer_anomaly", "acted")]
    assert acted["calls"] == 12 and acted["agreement"] == 1.0
    table = cli(d.config_path, "report")
    assert "always_shutdown" in table.stdout and "shadow" in table.stdout


def test_llm_under_a_queue_sheds_load_and_decides_every_event(tmp_path: Path) -> None:
    """Many submissions at once against a slow model and a short deadline: no crash, every
    event decided exactly once, the overflow goes to the rules as overloaded/timeout."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the llm extra) is not installed")
    from tests.tinygguf import write_tiny_gguf

    tiny = tmp_path / "tiny.gguf"
    sha = write_tiny_gguf(tiny)
    data = tmp_path / "data"
    cfg = freezer_config(data)
    cfg["models"] = [{"name": "tiny", "backend": "llama_cpp", "path": str(tiny), "sha256": sha,
                      "labels": ["none", "alert", "defrost", "shutdown"], "n_ctx": 2048, "circuit_failures": 1000,
                      "prompt": {"max_field_chars": 2000}}]
    cfg["skills"] = [{**cfg["skills"][0], "cascade": [{"model": "tiny"}], "deadline_ms": 150, "approval": {}}]
    loaded = parse_config(yaml.safe_dump(cfg))
    note = "the freezer door is open and the compressor is loud " * 9

    async def main() -> tuple[list[dict[str, Any]], int]:
        key, _ = create_key(data)
        async with Engine(loaded=loaded, key=key, run_handlers=False) as engine:
            # two alone first: the stage learns its run time, as it would in service
            warm = [await engine.decide("freezer_health", {"temperature_c": -20.0, "door_open_s": 5.0, "compressor_a": 5.0, "note": "x"})
                    for _ in range(2)]
            events = [{"temperature_c": -20.0 + i % 5, "door_open_s": 5.0, "compressor_a": 5.0, "note": note} for i in range(40)]
            records = await asyncio.gather(*(engine.decide("freezer_health", e, event_id=f"q-{i}") for i, e in enumerate(events)))
            stored = await engine.store.read(lambda c: c.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
            return warm + list(records), stored

    records, stored = asyncio.run(main())
    assert stored == 42 and len({r["event_id"] for r in records}) == 42
    reasons = Counter(r["fallback_reason"] or r["source"] for r in records)
    assert reasons["model"] > 0, reasons  # the model answered what fitted in the deadline
    assert reasons["overloaded"] > 0, reasons  # and the queue was shed, not waited out
    assert set(reasons) <= {"model", "overloaded", "timeout", "low_confidence", "circuit_open"}, reasons
    assert all(r["action"] in ("none", "alert", "defrost", "shutdown") for r in records)


def test_config_refuses_a_shadow_sharing_an_acted_model_and_prompt_fields_the_skill_lacks(tmp_path: Path) -> None:
    from agentd.errors import ConfigError

    cfg = freezer_config(tmp_path)
    cfg["skills"][0]["cascade"].append({"model": "freezer_anomaly", "shadow": True})
    with pytest.raises(ConfigError, match="shadow of model 'freezer_anomaly'"):
        parse_config(yaml.safe_dump(cfg))
    cfg = freezer_config(tmp_path)
    cfg["models"].append({**_example_llm_model(), "prompt": {"fields": ["text", "location"], "event": "R: {event}"}})
    cfg["skills"].append(_example_request_skill())
    with pytest.raises(ConfigError, match="location"):
        parse_config(yaml.safe_dump(cfg))


def test_a_reload_that_changes_only_rules_keeps_the_database_and_every_model_loaded(tmp_path: Path) -> None:
    _need_gemma()
    data = tmp_path / "data"
    data.mkdir()
    cfg = freezer_config(data)
    cfg["models"].append(_example_llm_model())
    cfg["skills"].append(_example_request_skill(deadline_ms=20_000))
    d = _start(tmp_path, cfg)
    try:
        event = {"op": "submit", "skill": "freezer_health", "data": {"temperature_c": -20.0, "door_open_s": 90.0, "compressor_a": 5.0}}
        first = d.request(event)["result"]
        before = d.request({"op": "status"})["result"]["resources"]
        assert set(before["models_loaded_at"]) == {"freezer_anomaly", "slow", "request_llm"}
        cfg["skills"][0]["rules"][1]["when"] = "door_open_s > 60.0"  # a rule changes; no model, no state setting
        d.config_path.write_text(yaml.safe_dump(cfg))
        d.messages.clear()
        d.signal(signal.SIGHUP)
        d.wait_for("config reloaded", timeout=60)
        after = d.request({"op": "status"})["result"]
        assert after["resources"] == before  # same store (opened once), same runtimes, no model loaded again
        assert d.request(event)["result"]["lifecycle"]["config_sha256"] != first["lifecycle"]["config_sha256"]  # the new config decides
        # a changed model setting reloads that model only
        cfg["models"][-1]["n_threads"] = 1
        d.config_path.write_text(yaml.safe_dump(cfg))
        d.messages.clear()
        d.signal(signal.SIGHUP)
        d.wait_for("config reloaded", timeout=120)
        changed = d.request({"op": "status"})["result"]["resources"]
        assert changed["store_opened_at"] == before["store_opened_at"]
        assert changed["model_loads"] == before["model_loads"] + 1
        assert changed["models_loaded_at"]["freezer_anomaly"] == before["models_loaded_at"]["freezer_anomaly"]
        assert changed["models_loaded_at"]["request_llm"] > before["models_loaded_at"]["request_llm"]
        assert d.stop() == 0
        audit = [json.loads(line) for line in cli(d.config_path, "audit", "export").stdout.splitlines()]
        assert [a["body"]["model"] for a in audit if a.get("kind") == "model_load"].count("request_llm") == 2
        assert cli(d.config_path, "audit", "verify").returncode == 0
    finally:
        d.stop()
