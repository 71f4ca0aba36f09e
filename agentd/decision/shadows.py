"""Shadow stages and late answers: run beside a decision, recorded, never acted on."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentd.decision.policy import StageTrace, gate
from agentd.errors import ModelError
from agentd.stages.base import CallHandle, Cancelled
from agentd.state import reports

if TYPE_CHECKING:
    from collections import Counter

    from agentd.config.schema import SkillConfig
    from agentd.stages.base import ModelStage
    from agentd.state.store import Store

log = logging.getLogger(__name__)


@dataclass
class ShadowCall:
    """A shadow stage's call in flight beside a decision."""

    skill: SkillConfig
    index: int
    cfg: Any
    trace: StageTrace
    stop_at: float
    started: float
    handle: CallHandle | None = None


class ShadowMixin:
    """The engine's shadow calls (a part of ``Engine``; the attributes are the engine's)."""

    active: dict[tuple[str, int], str]
    counters: Counter[str]
    stages: dict[str, ModelStage]
    store: Store

    def _start_shadow(self, skill: SkillConfig, index: int, stage_cfg: Any, fields: dict[str, Any]) -> ShadowCall:
        """Start a shadow stage's call for a committed decision, with the skill's deadline of its own.

        A shadow that would wait for its worker is skipped (``overloaded``): it samples the
        events that come while it is idle, and never holds up an acted call.
        """
        model_name = self.active.get((skill.name, index), stage_cfg.model)
        now = time.monotonic()
        budget = skill.deadline_ms / 1000
        if stage_cfg.timeout_ms is not None:
            budget = min(budget, stage_cfg.timeout_ms / 1000)
        call = ShadowCall(skill=skill, index=index, cfg=stage_cfg, trace=StageTrace(model=model_name), stop_at=now + budget, started=now)
        stage = self.stages.get(model_name)
        if stage is None or not stage.available:
            call.trace.outcome = "model_missing"
        elif stage.busy() or stage.expected_wait_s() > budget:
            call.trace.outcome = "overloaded"
        else:
            try:
                call.handle = stage.call(fields, call.stop_at)
            except ModelError:
                call.trace.outcome = "model_error"
        return call

    async def _finish_shadow(self, record: dict[str, Any], call: ShadowCall) -> None:
        """Wait for a shadow answer (until its deadline), then store it beside the decision."""
        trace, skill = call.trace, call.skill
        if call.handle is not None:
            try:
                answer = await call.handle.wait(max(0.0, call.stop_at - time.monotonic()))
            except asyncio.CancelledError:
                call.handle.cancel()  # shutting down: free the worker
                raise
            except TimeoutError:
                call.handle.cancel()
                trace.outcome = "timeout"
            except (ModelError, Cancelled):
                trace.outcome = "model_error"
            else:
                trace.answer, trace.confidence = answer.label, answer.confidence
                mapped = call.cfg.map.get(answer.label, answer.label)
                trace.action = mapped if mapped in skill.actions else None
                trace.outcome = gate(answer, call.cfg, skill.actions)[1]
            trace.latency_ms = round((time.monotonic() - call.started) * 1000, 3)
        stage = self.stages.get(trace.model)
        life = record["lifecycle"]
        acted = (record.get("approval") or {}).get("requested_action") or record["action"]
        row = reports.ShadowAnswer(
            record["id"], call.index, skill.name, trace.model, stage.version if stage else "?", life["stage"], life["release"],
            trace.outcome, trace.answer, trace.action, trace.confidence, trace.latency_ms, acted,
        )
        await self.store.write(lambda conn: reports.insert(conn, row))
        self.counters["shadow_answers"] += 1

    async def _late_answer(self, decision_id: str, trace: StageTrace, handle: CallHandle) -> None:
        try:
            answer = await handle.late()
        except (Cancelled, ModelError):
            return
        late = {"model": trace.model, "answer": answer.label, "confidence": round(answer.confidence, 4), "latency_ms": answer.latency_ms}
        await self.store.set_late_answer(decision_id, late)
        self.counters["late_answers"] += 1
