"""The cascade's stages: loaded through the model pool, switched by activate_model, and one call
under what is left of the deadline (gate, circuit breaker, cancellation, late answers)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from agentd.decision.calibration import action_scores, rescale
from agentd.decision.policy import CircuitBreaker, StageTrace, gate, possible_severe
from agentd.errors import InputError, ModelError
from agentd.stages.base import CallHandle, Cancelled, ModelStage, StageAnswer, Verdict

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig
    from agentd.config.schema import Config, SkillConfig
    from agentd.stages.pool import ModelPool
    from agentd.state.store import Store

log = logging.getLogger(__name__)


class CascadeMixin:
    """The engine's model stages (a part of ``Engine``; the attributes are the engine's)."""

    active: dict[tuple[str, int], str]
    calibrations: dict[str, float]
    cfg: Config
    circuits: dict[str, CircuitBreaker]
    loaded: LoadedConfig
    pool: ModelPool
    stages: dict[str, ModelStage]
    store: Store

    async def _load_models(self) -> None:
        used = {stage.model for skill in self.cfg.skills for stage in skill.cascade} | set(self.active.values())
        for m in self.cfg.models:
            if m.name in used:
                await self._load_model(m.name)

    async def _load_model(self, name: str) -> ModelStage:
        """Load (or return the loaded) model ``name``; a refused one becomes a MissingStage."""
        if name in self.stages:
            return self.stages[name]
        m = self.cfg.model(name)
        stage, fresh, missing = await self.pool.acquire(m)
        if fresh:
            await self.store.audit("model_load", {"model": m.name, "version": m.version, "backend": m.backend, "sha256": getattr(m, "sha256", None)})
            log.info("model %s loaded (%s, version %s)", m.name, m.backend, m.version)
        elif missing is not None:
            await self.store.audit("model_refused", {"model": m.name, "version": m.version, "reason": missing})
            log.error("model %s not loaded: %s", m.name, missing)
        self.stages[m.name] = stage
        self.circuits[m.name] = CircuitBreaker(m.circuit_failures, m.circuit_cooldown_s)
        return stage

    async def activate_model(self, skill_name: str, index: int, model: str, *, by: str) -> dict[str, Any]:
        """Switch cascade stage ``index`` of a skill to another declared model (e.g. a canary version).

        The model is loaded and hash-checked now, outside any decision; the switch persists
        until the config changes, and is audited.
        """
        skill = self.cfg.skill(skill_name)
        if not 0 <= index < len(skill.cascade):
            raise InputError(f"skill {skill_name!r} has {len(skill.cascade)} cascade stage(s); no stage {index}")
        self.cfg.model(model)  # ConfigError if it is not declared under models
        stage = await self._load_model(model)
        if not stage.available:
            raise ModelError(f"model {model!r} cannot be activated: {stage.missing_reason}")
        previous = self.active.get((skill_name, index), skill.cascade[index].model)
        self.active[(skill_name, index)] = model
        saved = {f"{s}/{i}": m for (s, i), m in self.active.items()}
        await self.store.set_setting("active_models", json.dumps({"config": self.loaded.sha256, "stages": saved}))
        await self.store.audit("model_activated", {"skill": skill_name, "stage": index, "from": previous, "to": model,
                                                   "version": stage.version, "sha256": stage.sha256, "by": by})
        return {"skill": skill_name, "stage": index, "model": model, "version": stage.version}

    async def _run_stage(
        self,
        skill: SkillConfig,
        stage_cfg: Any,
        model_name: str,
        fields: dict[str, Any],
        stop_at: float,
        trace: StageTrace,
        late: list[tuple[StageTrace, CallHandle]],
    ) -> tuple[str, str | None]:
        stage = self.stages.get(model_name)
        if stage is None or not stage.available:
            return "model_missing", None
        breaker = self.circuits[stage.name]
        now = time.monotonic()
        budget = stop_at - now
        if stage_cfg.timeout_ms is not None:
            budget = min(budget, stage_cfg.timeout_ms / 1000)
        if budget <= 0:
            return "timeout", None
        if stage.expected_wait_s() > budget:
            return "overloaded", None
        if stage.abstains(fields):
            return "abstained", None
        if not breaker.allow(now):
            return "circuit_open", None
        t = time.monotonic()
        try:
            handle = stage.call(fields, now + budget)
        except ModelError:
            breaker.failure(time.monotonic())
            return "model_error", None
        try:
            answer = await handle.wait(budget)
        except asyncio.CancelledError:
            handle.cancel()  # the decision was abandoned (shutdown): free the worker too
            raise
        except TimeoutError:
            # The stage may have answered in time, its answer waiting for a busy event loop to take
            # it: that is no fault of the model's (and must not open its circuit), and the answer
            # stands. A call late only through load is a timeout, but not a failure of the model.
            ready = handle.answered()
            if ready is None:
                handle.cancel()
                if handle.model_late(budget):
                    breaker.failure(time.monotonic())
                trace.latency_ms = round((time.monotonic() - t) * 1000, 3)
                late.append((trace, handle))
                return "timeout", None
            answer = ready
        except (ModelError, Cancelled) as exc:
            breaker.failure(time.monotonic())
            trace.latency_ms = round((time.monotonic() - t) * 1000, 3)
            log.warning("model %s failed: %s", stage.name, exc)
            return "model_error", None
        breaker.success()
        temperature = self.calibrations.get(f"{stage.name}@{stage.version}")
        if temperature is not None and answer.scores:  # fitted on the node's labels (decision/learning.py)
            scores = rescale(answer.scores, temperature)
            answer = StageAnswer(answer.label, scores.get(answer.label, answer.confidence), scores, answer.latency_ms,
                                 {**answer.extra, "raw_confidence": round(answer.confidence, 4), "temperature": round(temperature, 4)},
                                 answer.verdict)
        trace.answer, trace.confidence, trace.scores = answer.label, answer.confidence, answer.scores
        trace.latency_ms = round((time.monotonic() - t) * 1000, 3)
        trace.extra = dict(answer.extra)
        mapped = stage_cfg.map.get(answer.label, answer.label)
        trace.action = mapped if mapped in skill.actions else None
        ood = input_verdict(stage, fields, answer)
        if ood is not None:
            trace.extra["ood_score"] = round(ood.score, 4)
            if ood.field is not None:
                trace.extra["ood_field"] = ood.field
        action, outcome = gate(answer, stage_cfg, skill.actions, ood)
        if action is not None and answer.scores and skill.uncertain.severe_share is not None:  # off: no work per answer
            severe = possible_severe(skill, action, action_scores(answer.scores, stage_cfg.map, skill.actions))
            if severe is not None:  # "nothing to do", yet too likely an emergency to say so unasked
                trace.extra["severe"] = {"action": severe[0], "share": round(severe[1], 4)}
                return "possible_severe", None
        return outcome, action


def input_verdict(stage: ModelStage, fields: dict[str, Any], answer: StageAnswer | None = None) -> Verdict | None:
    """How far the event lies from what the stage knows: by its card, else by the score its answer
    carries (a text stage's distance to its examples); None when neither says. An answer that
    carries the card's verdict (the ONNX stage scores its batch on its worker thread) is not scored again."""
    if answer is not None and answer.verdict is not None:
        return answer.verdict
    if stage.card is None:
        score = answer.extra.get("ood_score") if answer is not None else None
        return Verdict(float(score)) if isinstance(score, int | float) else None
    try:
        return stage.card.check(fields)
    except (KeyError, TypeError, ValueError):  # a field the card needs is not a number: as far out as it gets
        return Verdict(float("inf"), next((f for f in stage.card.inputs if not isinstance(fields.get(f), int | float)), None))
