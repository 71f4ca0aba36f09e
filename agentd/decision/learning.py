"""What the engine learns from its operators' labels (a part of ``Engine``).

- **Text stages learn**: a labelled decision's text becomes an example of every text stage
  of its skill (``stages/embedding.py``), at once and again at each start.
- **Calibration**: ``calibrate`` fits a temperature per model version on the labelled
  answers (``decision/calibration.py``); the cascade applies it before the gate, and the
  trace keeps the raw confidence beside the calibrated one.
- **A model earns the right to act**: each cascade stage is acting or shadow; the config's
  ``shadow:`` is only where it starts. The state is stored, audited and shown by status.
  With ``promote.auto`` a shadow stage whose labelled accuracy beats the rules' on the same
  events over at least ``promote.min_labels`` labels is promoted; an acting stage that falls
  below them is demoted, and the rules take over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from agentd.decision.calibration import MIN_LABELS, Labelled, action_scores, ece_at, fit, nll_at, nll_gain, rescale
from agentd.decision.label_writes import replicated_label
from agentd.decision.policy import rules_action
from agentd.errors import InputError
from agentd.state import fleet_state, labels, queries
from agentd.state.queries import DecisionFilter

if TYPE_CHECKING:
    from collections import Counter

    from agentd.config.schema import Config, SkillConfig, StageConfig
    from agentd.decision.rules import SkillRules
    from agentd.stages.base import ModelStage
    from agentd.state.lww import Entry
    from agentd.state.store import Store

log = logging.getLogger(__name__)
STATES = ("acting", "shadow")


class LearningMixin:
    """Labels in, better decisions out (a part of ``Engine``; the attributes are the engine's)."""

    active: dict[tuple[str, int], str]
    calibrations: dict[str, float]
    cfg: Config
    counters: Counter[str]
    node: str
    _replicated_pending: list[Entry] | None  # peers' labels waiting for the running drain (None: no drain)
    rules: dict[str, SkillRules]
    stage_states: dict[tuple[str, int], str]
    stages: dict[str, ModelStage]
    store: Store

    if TYPE_CHECKING:
        def _spawn(self, coro: Any, *, name: str) -> None: ...

    # -- state ---------------------------------------------------------------------

    async def _load_learning(self) -> None:
        """Calibrations and stage states from the database; text stages taught the labels kept so far."""
        raw = await self.store.read(lambda c: queries.get_setting(c, "calibration"))
        self.calibrations = {k: float(v["temperature"]) for k, v in (json.loads(raw) if raw else {}).items()}
        raw = await self.store.read(lambda c: queries.get_setting(c, "stage_states"))
        for key, saved in (json.loads(raw) if raw else {}).items():
            skill_name, _, idx = key.rpartition("/")
            skill = next((s for s in self.cfg.skills if s.name == skill_name), None)
            if skill is None or not idx.isdigit() or int(idx) >= len(skill.cascade):
                continue
            st = skill.cascade[int(idx)]
            # A state holds while the stage is the same model and its configured `shadow:` is what it
            # was; editing either in the config starts the stage afresh from the config.
            if st.model == saved.get("model") and saved.get("configured", st.shadow) == st.shadow:
                self.stage_states[(skill_name, int(idx))] = saved["state"]
        for skill in self.cfg.skills:
            if any(self._learner(skill, i) is not None for i in range(len(skill.cascade))):
                rows = await self._labelled_rows(skill)
                await self._teach(skill, [(r.record, r.label) for r in rows])
        now = time.time()
        peers = await self.store.read(lambda c: [e for e in fleet_state.entries(c, fleet_state.LABEL_GLOB)
                                                 if e.expires_at is None or e.expires_at > now])
        await self.learn_replicated(peers)

    def replicated_label_arrived(self, entry: Entry) -> None:
        """A peer's fleet-state write was merged: if it is a replicated label, learn from it in the
        background. Labels that arrive together (a healed partition brings hundreds) are learnt in
        one batch: one refit of each text stage, not one per label."""
        if replicated_label(entry) is None:
            return
        pending: list[Entry] | None = getattr(self, "_replicated_pending", None)
        if pending is not None:  # a drain is running: it takes this one too
            pending.append(entry)
            return
        self._replicated_pending = [entry]
        self._spawn(self._drain_replicated(), name="learn-replicated-labels")

    async def _drain_replicated(self) -> None:
        try:
            while self._replicated_pending:
                batch, self._replicated_pending = self._replicated_pending, []
                await self.learn_replicated(batch)
        finally:
            self._replicated_pending = None

    async def learn_replicated(self, entries: list[Entry]) -> int:
        """Peers' replicated labels (decision/label_writes.py) that carry their inputs teach the text stages
        of the same skill here, as this node's own labels do; how many were taken."""
        by_skill: dict[str, list[tuple[dict[str, Any], str]]] = {}
        for e in entries:
            got = replicated_label(e)
            if got is None or got[0] == self.node or not isinstance(got[2].get("inputs"), dict):
                continue
            node, decision_id, value = got
            by_skill.setdefault(value["skill"], []).append(({"id": f"{node}/{decision_id}", "inputs": value["inputs"]}, value["action"]))
        taken = 0
        for name, rows in by_skill.items():
            skill = next((s for s in self.cfg.skills if s.name == name), None)
            if skill is not None:
                await self._teach(skill, rows)
                taken += len(rows)
        return taken

    def is_shadow(self, skill_name: str, index: int, stage_cfg: StageConfig) -> bool:
        """Whether a cascade stage is a shadow now (the node's own state, else the config's)."""
        state = self.stage_states.get((skill_name, index))
        return stage_cfg.shadow if state is None else state == "shadow"

    def stage_state_list(self) -> list[dict[str, Any]]:
        """Every cascade stage's state, for status."""
        return [{"skill": s.name, "stage": i, "model": st.model, "state": "shadow" if self.is_shadow(s.name, i, st) else "acting",
                 "configured": "shadow" if st.shadow else "acting", "auto": st.promote.auto}
                for s in self.cfg.skills for i, st in enumerate(s.cascade)]

    async def set_stage_state(self, skill_name: str, index: int, state: str, *, by: str, evidence: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make a cascade stage acting or shadow; persisted and audited."""
        skill = self.cfg.skill(skill_name)
        if state not in STATES:
            raise InputError(f"unknown stage state {state!r} (known: {', '.join(STATES)})")
        if not 0 <= index < len(skill.cascade):
            raise InputError(f"skill {skill_name!r} has {len(skill.cascade)} cascade stage(s); no stage {index}")
        before = "shadow" if self.is_shadow(skill_name, index, skill.cascade[index]) else "acting"
        self.stage_states[(skill_name, index)] = state
        saved = {f"{s}/{i}": {"state": st, "model": self.cfg.skill(s).cascade[i].model, "configured": self.cfg.skill(s).cascade[i].shadow}
                 for (s, i), st in self.stage_states.items() if any(k.name == s for k in self.cfg.skills)}
        await self.store.set_setting("stage_states", json.dumps(saved, sort_keys=True))
        body = {"skill": skill_name, "stage": index, "model": skill.cascade[index].model, "from": before, "to": state, "by": by}
        await self.store.audit("stage_state", {**body, **({"evidence": evidence} if evidence else {})})
        if before != state:
            self.counters[f"stage_{'promoted' if state == 'acting' else 'demoted'}"] += 1
            log.warning("skill %s stage %d (%s): %s -> %s by %s %s", skill_name, index, skill.cascade[index].model, before, state, by, evidence or "")
        return body

    # -- labels --------------------------------------------------------------------

    async def _on_label(self, record: dict[str, Any], action: str) -> None:
        """A label was committed: teach the text stages, and review the stages that promote themselves."""
        skill = next((s for s in self.cfg.skills if s.name == record.get("skill")), None)
        if skill is None:
            return
        await self._teach(skill, [(record, action)])
        if any(st.promote.auto for st in skill.cascade):
            self._spawn(self._review_stages(skill), name=f"review-{skill.name}")

    def _learner(self, skill: SkillConfig, index: int) -> ModelStage | None:
        """The loaded stage of a cascade index (the activated model, else the configured one), if it learns."""
        stage = self.stages.get(self.active.get((skill.name, index), skill.cascade[index].model))
        return stage if stage is not None and stage.learns else None

    async def _labelled_rows(self, skill: SkillConfig, limit: int = 10_000) -> list[labels.Labelled]:
        """The skill's newest labelled decisions, oldest first, with their shadow answers."""
        return await self.store.read(lambda c: labels.labelled(c, DecisionFilter(skill=skill.name), limit=limit))

    async def _teach(self, skill: SkillConfig, rows: list[tuple[dict[str, Any], str]]) -> None:
        """Labelled decisions become examples of the skill's text stages (off the event loop: embedding and refit)."""
        for index, st in enumerate(skill.cascade):
            stage = self._learner(skill, index)
            if stage is None:
                continue
            items = []
            for record, action in rows:
                label = next((lab for lab, act in st.map.items() if act == action), action)
                if label in stage.labels:  # an action the stage has no label for teaches it nothing
                    items.append((str(record.get("id")), record.get("inputs") or {}, label))
            if items:
                await asyncio.to_thread(stage.learn_many, items)

    async def _review_stages(self, skill: SkillConfig) -> None:
        rows = await self._labelled_rows(skill, limit=2000)
        for index, st in enumerate(skill.cascade):
            if not st.promote.auto:
                continue
            model = self.active.get((skill.name, index), st.model)
            # (when, stage right, rules right, labeller) on the same labelled events, in the order they were decided
            pairs: list[tuple[float, bool, bool, str]] = []
            for row in rows:
                rules = rules_action(row.record, skill)
                trace = next((t for t in row.record.get("stages") or [] if t.get("model") == model and t.get("action")), None)
                answer = trace["action"] if trace is not None else next(
                    (s["action"] for s in row.shadows if s["stage_index"] == index and s["action"]), None)
                if answer is not None and rules is not None:
                    pairs.append((float(row.record.get("created_at", 0)), answer == row.label, rules == row.label, row.by))
            pairs = sorted(pairs, key=lambda p: p[0])[-st.promote.window:]
            if len(pairs) < st.promote.min_labels:
                continue
            stage_acc, rules_acc = sum(p[1] for p in pairs) / len(pairs), sum(p[2] for p in pairs) / len(pairs)
            labellers = len({p[3] for p in pairs})
            shadow = self.is_shadow(skill.name, index, st)
            evidence = {"labels": len(pairs), "labellers": labellers, "stage_accuracy": round(stage_acc, 4), "rules_accuracy": round(rules_acc, 4)}
            # Promotion gives a model the right to act: it needs labels from more than one person, so
            # that one operator's labels alone cannot make a model act (demotion needs no such care).
            if shadow and stage_acc > rules_acc + st.promote.margin and labellers >= st.promote.min_labellers:
                await self.set_stage_state(skill.name, index, "acting", by="auto", evidence=evidence)
            elif not shadow and stage_acc < rules_acc:
                await self.set_stage_state(skill.name, index, "shadow", by="auto", evidence=evidence)

    # -- calibration ---------------------------------------------------------------

    async def calibrate(self, *, by: str, skill_name: str | None = None, min_labels: int = MIN_LABELS) -> list[dict[str, Any]]:
        """Fit a temperature per model version on the labelled answers, keep and apply it; audited.

        Each row gives the fit (temperature, ECE before and after on the labels it was fitted
        on) and ``held_out``: a fit on the older 70 % judged on the newest 30 %.
        """
        skills = [self.cfg.skill(skill_name)] if skill_name else list(self.cfg.skills)
        groups: dict[str, list[Labelled]] = {}
        for skill in skills:
            maps = {self.active.get((skill.name, i), st.model): st.map for i, st in enumerate(skill.cascade)}
            for labelled in await self._labelled_rows(skill):
                record, label = labelled.record, labelled.label
                versions = (record.get("lifecycle") or {}).get("models") or {}
                for t in record.get("stages") or []:
                    if not t.get("scores") or t.get("model") not in maps:
                        continue
                    raw = rescale(t["scores"], 1.0 / t["temperature"]) if t.get("temperature") else t["scores"]
                    scores = action_scores(raw, maps[t["model"]], skill.actions)
                    if scores:
                        groups.setdefault(f"{t['model']}@{versions.get(t['model'], '?')}", []).append(Labelled(scores, label))
        out: list[dict[str, Any]] = []
        saved: dict[str, Any] = {}
        previous = await self.store.read(lambda c: queries.get_setting(c, "calibration"))
        saved.update(json.loads(previous) if previous else {})
        for key, items in sorted(groups.items()):
            result = await asyncio.to_thread(fit, items, min_labels=min_labels)
            if result is None:
                out.append({"model": key, "labels": len(items), "fitted": False, "reason": f"fewer than {min_labels} labelled answers"})
                continue
            cut = int(len(items) * 0.7)
            early = await asyncio.to_thread(fit, items[:cut], min_labels=1)
            held = _held_out(items[cut:], early.temperature) if early is not None and cut < len(items) else None
            # Applied only if it makes labels it never saw clearly more likely: by the likelihood it fits
            # (a proper score; the ECE of a few dozen labels moves by more than a fit changes it),
            # beyond the noise of that many labels.
            if held is not None and held["nll_gain_low"] <= 0:
                out.append({"model": key, "labels": len(items), "fitted": False, "held_out": held,
                            "reason": "the fit did not make the held-out labels clearly more likely; kept the previous one"})
                continue
            row = {"model": key, "fitted": True, **result.as_dict(), "held_out": held, "fitted_at": round(time.time(), 3)}
            saved[key] = row
            self.calibrations[key] = result.temperature
            out.append(row)
        await self.store.set_setting("calibration", json.dumps(saved, sort_keys=True))
        await self.store.audit("calibration", {"by": by, "models": out})
        return out


def _held_out(items: list[Labelled], temperature: float) -> dict[str, float | int] | None:
    """How a temperature fitted on older labels does on newer ones it never saw."""
    if not items:
        return None
    return {"labels": len(items), "temperature": round(temperature, 4), "ece_before": round(ece_at(items, 1.0), 4),
            "ece_after": round(ece_at(items, temperature), 4), "nll_before": round(nll_at(items, 1.0), 4),
            "nll_after": round(nll_at(items, temperature), 4), "nll_gain_low": round(nll_gain(items, temperature)[1], 4)}

