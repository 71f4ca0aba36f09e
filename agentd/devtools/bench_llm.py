"""The LLM and accuracy parts of ``agentd bench``, with their baselines measured in the same run.

``llm``: the llama.cpp stage against a raw llama.cpp eval of the same event suffix after
the same cached prefix, and against llama-cpp-python's grammar-constrained JSON
generation of the same decision (prefix reused, and evaluated afresh); deadline
adherence while the model is busy; RSS of a daemon with the LLM loaded.
``accuracy``: each example skill on a labelled set: each stage alone, the rules alone,
the cascade, with the fallback rate and what the confidence gate accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.config.models import LlamaModelConfig, OnnxModelConfig
from agentd.devtools.bench import bench_config, interleaved, start_child, with_engine
from agentd.devtools.labelled import freezer_events, operator_requests
from agentd.errors import ModelError
from agentd.stages.base import CancelFlag
from agentd.stats import percentile

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig
    from agentd.config.schema import Config, SkillConfig
    from agentd.stages.llama import LlamaStage


def _llm_skill(cfg: Config) -> tuple[SkillConfig, LlamaModelConfig] | None:
    for s in cfg.skills:
        for st in s.cascade:
            m = cfg.model(st.model)
            if isinstance(m, LlamaModelConfig):
                return s, m
    return None


def _only_skill(loaded: LoadedConfig, skill: SkillConfig, data_dir: Path, **update: Any) -> LoadedConfig:
    """``bench_config`` for ``skill``, without MQTT (these parts measure the model, not the mesh)."""
    bl = bench_config(loaded, data_dir, skill, **update)
    mqtt = bl.config.mqtt.model_copy(update={"enabled": False})
    return replace(bl, config=bl.config.model_copy(update={"mqtt": mqtt}))


def llm_part(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    found = _llm_skill(loaded.config)
    if found is None:
        return {"llm_note": "no llama_cpp stage in the config"}
    skill, model_cfg = found
    from agentd.stages.registry import build_stage

    try:
        stage: LlamaStage = build_stage(model_cfg)  # type: ignore[assignment]
    except ModelError as exc:
        return {"llm_note": f"LLM not measured: {exc}"}
    if "text" not in skill.input:
        return {"llm_note": f"skill {skill.name!r} has no text field; the LLM bench uses the staff requests of operator_request"}
    labelled = operator_requests()
    events = [e for e, _ in labelled]
    n = max(20, min(len(events), samples // 8))
    events = (events * (n // len(events) + 1))[:n]
    out: dict[str, Any] = {"llm_model": model_cfg.name, "llm_version": model_cfg.version, "llm_samples": n,
                           "llm_prefix_tokens": len(stage.prefix_tokens)}
    never = CancelFlag()
    suffixes = [stage.suffix_tokens(e) for e in events]
    for e, s in zip(events[:3], suffixes[:3], strict=True):  # warm-up
        stage.raw_eval(s)
        stage.predict(e, never)
    raw, inproc = interleaved(stage.raw_eval, lambda e: stage.predict(e, never), list(zip(suffixes, events, strict=True)))

    async def via_worker() -> tuple[list[float], list[float]]:
        """The stage as the engine calls it (its worker thread), interleaved with the raw eval.

        The raw eval runs on this thread while the worker is idle between calls, so the
        two never share the Llama object at once.
        """
        lat, raw2 = [], []
        for e, s in zip(events, suffixes, strict=True):
            t = time.perf_counter()
            stage.raw_eval(s)
            raw2.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await stage.call(e, time.monotonic() + 30).future
            lat.append((time.perf_counter() - t) * 1000)
        await stage.close()
        return lat, raw2

    called, raw_beside = asyncio.run(via_worker())
    raw50 = statistics.median(raw_beside)
    out.update({
        "llm_suffix_tokens_p50": statistics.median(len(s) for s in suffixes),
        "llm_suffix_eval_p50_ms": round(raw50, 2),
        "llm_predict_p50_ms": round(statistics.median(inproc), 2),
        "llm_predict_ratio": round(statistics.median(inproc) / statistics.median(raw), 3),
        "llm_p50_ms": round(statistics.median(called), 2),
        "llm_p99_ms": round(percentile(called, 99), 2),
        "llm_ratio_vs_suffix_eval": round(statistics.median(called) / raw50, 3),
    })
    out.update(_grammar(model_cfg, stage, events[: min(20, n)]))
    if "llm_grammar_json_p50_ms" in out:
        out["llm_speedup_vs_grammar"] = round(out["llm_grammar_json_p50_ms"] / out["llm_p50_ms"], 2)
        out["llm_speedup_vs_grammar_fresh"] = round(out["llm_grammar_json_fresh_p50_ms"] / out["llm_p50_ms"], 2)
    out.update(_llm_deadline(loaded, skill, data_dir / "deadline", labelled))
    child = start_child(_only_skill(loaded, skill, data_dir / "rss"))
    out["rss_llm_mb"], out["startup_llm_s"] = child["rss_mb"], child["startup_s"]
    return out


def _grammar(model_cfg: LlamaModelConfig, stage: LlamaStage, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Grammar-constrained JSON generation of the same decision, on a second Llama of the same file."""
    import llama_cpp

    from agentd.stages.llama import load_llama, render_event, render_prefix

    llm = load_llama(llama_cpp, model_path=model_cfg.path, n_ctx=model_cfg.n_ctx, n_threads=model_cfg.n_threads,
                     n_threads_batch=model_cfg.n_threads, n_batch=model_cfg.n_batch, verbose=False, seed=0)  # as the stage does on AMX
    schema = {"type": "object", "properties": {"action": {"type": "string", "enum": list(model_cfg.labels)}}, "required": ["action"]}
    grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)  # type: ignore[attr-defined]  # not in its stubs
    prefix = render_prefix(stage.prompt, stage.choices)
    reused: list[float] = []
    fresh: list[float] = []
    valid = 0
    try:
        for i, e in enumerate([events[0], *events]):
            prompt = prefix + render_event(stage.prompt, e) + " "
            for mode in ("reused", "fresh"):
                if mode == "fresh":
                    llm.reset()  # forget the evaluated tokens: the whole prompt is evaluated again
                t = time.perf_counter()
                res = llm.create_completion(prompt, grammar=grammar, max_tokens=24, temperature=0.0)
                ms = (time.perf_counter() - t) * 1000
                if i == 0:
                    continue  # warm-up
                (reused if mode == "reused" else fresh).append(ms)
                text = res["choices"][0]["text"]
                with contextlib.suppress(ValueError, AttributeError):
                    valid += json.loads(text).get("action") in model_cfg.labels
    finally:
        llm.close()
    return {
        "llm_grammar_json_p50_ms": round(statistics.median(reused), 1),  # llama-cpp-python reused the prefix
        "llm_grammar_json_fresh_p50_ms": round(statistics.median(fresh), 1),  # prefix evaluated afresh
        "llm_grammar_json_samples": len(reused),
        "llm_grammar_json_valid": round(valid / (2 * len(reused)), 3),
    }


def _llm_deadline(loaded: LoadedConfig, skill: SkillConfig, data_dir: Path, labelled: list[tuple[dict[str, Any], str]]) -> dict[str, Any]:
    """A deadline shorter than two evaluations, events arriving in bursts of four: the queue overflows."""
    deadline_ms = 100.0
    bl = _only_skill(loaded, skill, data_dir, deadline_ms=deadline_ms)
    # keep the model in play for every event: an open circuit would skip it and flatter the figure
    models = [m.model_copy(update={"circuit_failures": 1000}) if isinstance(m, LlamaModelConfig) else m for m in bl.config.models]
    bl = replace(bl, config=bl.config.model_copy(update={"models": models}))
    long_text = {"text": ("The compressor in bay 2 is making a loud noise and " * 8)[:300]}
    events = [long_text if i % 3 == 0 else e for i, (e, _) in enumerate(labelled[:120])] or [long_text] * 120

    async def go(engine: Any) -> tuple[list[float], Counter[str]]:
        total: list[float] = []
        reasons: Counter[str] = Counter()

        async def one(e: dict[str, Any]) -> None:
            t = time.monotonic()
            r = await engine.decide(skill.name, e, received=t)
            total.append((time.monotonic() - t) * 1000)
            reasons[r["fallback_reason"] or r["source"]] += 1

        for i in range(0, len(events), 4):
            await asyncio.gather(*(one(e) for e in events[i : i + 4]))
        return total, reasons

    total, reasons = asyncio.run(with_engine(bl, go))
    return {
        "llm_deadline_ms": deadline_ms,
        "llm_deadline_samples": len(total),
        "llm_deadline_adherence": round(sum(1 for t in total if t <= deadline_ms + 10) / len(total), 4),
        "llm_deadline_max_ms": round(max(total), 2),
        "llm_deadline_outcomes": dict(reasons),
    }


# -- accuracy -----------------------------------------------------------------


def accuracy_part(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    """Each example skill on its labelled set. Guards are left out: they enforce fleet policy, not accuracy."""
    out: dict[str, Any] = {}
    cfg = loaded.config
    for skill in cfg.skills:
        if "text" in skill.input:
            labelled, key = operator_requests(), "acc_request"
        elif {"temperature_c", "compressor_a"} <= set(skill.input):
            labelled, key = freezer_events(), "acc_freezer"
        else:
            continue
        out[f"{key}_events"] = len(labelled)
        rules = _run_skill(loaded, skill, data_dir / f"{key}-rules", labelled, cascade=[])
        out[f"{key}_rules"] = rules["accuracy"]
        cascade = _run_skill(loaded, skill, data_dir / f"{key}-cascade", labelled)
        out[f"{key}_cascade"] = cascade["accuracy"]
        out[f"{key}_cascade_fallback_rate"] = cascade["fallback_rate"]
        out[f"{key}_cascade_fallbacks"] = cascade["fallbacks"]
        out[f"{key}_gate_accepted"] = cascade["accepted"]
        out[f"{key}_gate_accepted_accuracy"] = cascade["accepted_accuracy"]
        for stage_cfg in skill.cascade:
            m = cfg.model(stage_cfg.model)
            if isinstance(m, OnnxModelConfig | LlamaModelConfig):
                out[f"{key}_{m.name}_alone"] = cascade["stage_alone"].get(m.name)
                out[f"{key}_{m.name}_alone_answered"] = cascade["stage_answered"].get(m.name)
                if isinstance(m, LlamaModelConfig) and m.prompt.calibrate:
                    out[f"{key}_{m.name}_alone_uncalibrated"] = cascade["stage_alone_uncal"].get(m.name)
    return out


def _run_skill(loaded: LoadedConfig, skill: SkillConfig, data_dir: Path, labelled: list[tuple[dict[str, Any], str]], **update: Any) -> dict[str, Any]:
    # a generous deadline: this measures what the models know, not how fast they are
    update.setdefault("deadline_ms", max(skill.deadline_ms, 5000.0))
    bl = _only_skill(loaded, skill, data_dir, guards=[], **update)

    async def go(engine: Any) -> list[dict[str, Any]]:
        return [await engine.decide(skill.name, e) for e, _ in labelled]

    records = asyncio.run(with_engine(bl, go))
    right = accepted = accepted_right = 0
    fallbacks: Counter[str] = Counter()
    alone: Counter[str] = Counter()
    alone_uncal: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    for r, (_, want) in zip(records, labelled, strict=True):
        got = (r.get("approval") or {}).get("requested_action") or r["action"]
        right += got == want
        if r["source"] == "model":
            accepted += 1
            accepted_right += got == want
        elif r["fallback_reason"]:
            fallbacks[r["fallback_reason"]] += 1
        for st in r["stages"]:
            if st.get("answer") is not None:
                answered[st["model"]] += 1
                alone[st["model"]] += st.get("action") == want
                unc = st.get("uncalibrated")
                if unc:
                    alone_uncal[st["model"]] += _mapped(skill, st["model"], max(unc, key=unc.get)) == want
    n = len(labelled)
    return {
        "accuracy": round(right / n, 4),
        "fallback_rate": round(sum(fallbacks.values()) / n, 4),
        "fallbacks": dict(fallbacks),
        "accepted": round(accepted / n, 4),
        "accepted_accuracy": round(accepted_right / accepted, 4) if accepted else None,
        "stage_alone": {m: round(alone[m] / answered[m], 4) for m in answered},
        "stage_alone_uncal": {m: round(alone_uncal[m] / answered[m], 4) for m in answered},
        "stage_answered": {m: round(answered[m] / n, 4) for m in answered},
    }


def _mapped(skill: SkillConfig, model: str, label: str) -> str:
    for st in skill.cascade:
        if st.model == model:
            return st.map.get(label, label)
    return label
