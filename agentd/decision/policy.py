"""Decision semantics as plain functions over plain data (DESIGN section 3).

Event validation, the confidence gate, the circuit breaker, approval policy and the
decision record. The engine (``agentd.engine``) does the I/O around them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentd.config.schema import SkillConfig, StageConfig
    from agentd.stages.base import StageAnswer, Verdict


ACCEPTED = "accepted"


def gate(answer: StageAnswer, stage: StageConfig, actions: list[str], ood: Verdict | None = None) -> tuple[str | None, str]:
    """Map a model answer to an action and apply the stage's gates.

    Returns ``(action, "accepted")`` or ``(None, reason)`` with reason ``invalid_output``
    (the label maps to no allowed action), ``out_of_distribution`` (the input lies outside
    what the model was trained on, by its card) or ``low_confidence``.
    """
    action = stage.map.get(answer.label, answer.label)
    if action not in actions:
        return None, "invalid_output"
    if ood is not None and stage.max_ood_score is not None and ood.outside(stage.max_ood_score):
        return None, "out_of_distribution"
    if not (answer.confidence >= stage.min_confidence):  # NaN fails too
        return None, "low_confidence"
    return action, ACCEPTED


def possible_severe(skill: SkillConfig, action: str, scores: Mapping[str, float]) -> tuple[str, float] | None:
    """The most severe of ``skill.uncertain.actions`` that an answer of "nothing to do" (the default
    rule's action) still gives at least ``uncertain.severe_share``, with that share; None if none
    (or the check is off). ``scores`` are per action."""
    floor = skill.uncertain.severe_share
    if floor is None or action != skill.rules[-1].action:
        return None
    over = [(a, p) for a, p in scores.items()
            if a in (skill.uncertain.actions or ()) and p >= floor and skill.safer(action, a) != action]
    return max(over, key=lambda ap: skill.severity_of(ap[0]), default=None)


def rules_say_severe(skill: SkillConfig, model_action: str, rules_action: str) -> bool:
    """A model's "nothing to do" against rules that answer one of ``uncertain.actions``: with
    ``possible_severe`` asked about, the rules' answer applies (a keyword that means danger is not
    overruled by a model saying all is well)."""
    u = skill.uncertain
    return ("possible_severe" in u.ask and model_action == skill.rules[-1].action and rules_action in (u.actions or ())
            and skill.safer(model_action, rules_action) != model_action)


def unsure_ask(skill: SkillConfig, traces: Sequence[StageTrace], rules_action: str, *, default: bool) -> tuple[str, str] | None:
    """What a human is asked about when no model answer was accepted: ``(why, action)``, or None.

    Models that answered but were not trusted (unsure, out of their distribution, a
    "nothing to do" that did not rule out a severe action, which is asked about as that
    action): the most severe of their answers, when it is more severe than the rules'.
    The default rule means "nothing to do", not "the model was unsure": over it
    (``default``), any such answer counts; over another rule only those among
    ``uncertain.actions``.
    """
    if not traces:  # no model was asked (rules only, or none acting)
        return None
    u = skill.uncertain
    unsure = [(t.outcome, a) for t in traces if t.outcome in u.ask
              and (a := (t.extra.get("severe") or {}).get("action") or t.action) is not None
              and (default or u.actions is None or a in u.actions)]
    worst = max(unsure, key=lambda oa: skill.severity_of(str(oa[1])), default=None)
    return worst if worst is not None and skill.safer(rules_action, worst[1]) != rules_action else None


@dataclass
class CircuitBreaker:
    """Per-model breaker: opens after ``failures`` consecutive timeouts/errors, then after
    ``cooldown_s`` lets one probe call through, whose outcome closes or re-opens it."""

    failures: int
    cooldown_s: float
    consecutive: int = 0
    opened_at: float | None = None
    probing: bool = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.probing else "open"

    def allow(self, now: float) -> bool:
        """May a call go through now? (Starts the probe when the cool-down is over.)"""
        if self.opened_at is None:
            return True
        if self.probing:
            return False
        if now - self.opened_at >= self.cooldown_s:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.consecutive, self.opened_at, self.probing = 0, None, False

    def failure(self, now: float) -> None:
        self.consecutive += 1
        if self.probing or self.consecutive >= self.failures:
            self.opened_at, self.probing = now, False


def disagreement(skill: SkillConfig, model_action: str, rules_action: str) -> tuple[bool, bool]:
    """An accepted model answer the rules do not share, by ``skill.on_disagreement``:
    ``(the rules' answer applies, a human is asked about the model's)``.

    ``ask`` asks only when the model's answer is the more severe; otherwise the rules'
    (the safer) applies and there is nothing to ask. ``safer`` takes the more severe.
    """
    policy = skill.on_disagreement
    model_safer = skill.safer(rules_action, model_action) != rules_action
    if policy == "ask":
        return True, model_safer
    return policy == "rules" or (policy == "safer" and not model_safer), False


def rules_action(record: dict[str, Any], skill: SkillConfig | None) -> str | None:
    """What the rules answered on a decision, where it can be told: the answer kept beside an
    accepted model answer (``rules_answer``), else the action of the rule that decided (by its
    name in the skill's current rules), else the record's action when the rules decided it
    and nothing (a guard, an approval) changed it since."""
    beside = record.get("rules_answer")
    if isinstance(beside, dict) and isinstance(beside.get("action"), str):
        return str(beside["action"])
    name = record.get("rule")
    if name is None:
        return None
    rule = next((r for r in skill.rules if r.name == name), None) if skill is not None else None
    if rule is not None:
        return rule.action
    if record.get("source") == "rules" and not record.get("guard") and record.get("approval") is None:
        return str(record.get("action"))
    return None


def needs_approval(skill: SkillConfig, mode: str, action: str) -> bool:
    """Whether ``action`` must wait for a human (listed, or every action in manual mode)."""
    if mode == "manual":
        return True
    return action in skill.approval.actions and action != skill.approval.interim


def interim_action(skill: SkillConfig) -> str:
    """What applies while a decision waits: the configured interim, else the default rule's action."""
    return skill.approval.interim or skill.rules[-1].action


@dataclass
class StageTrace:
    model: str
    answer: str | None = None
    confidence: float | None = None
    latency_ms: float | None = None
    outcome: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    action: str | None = None  # the answer mapped to an action, whether or not it was acted on
    extra: dict[str, Any] = field(default_factory=dict)  # backend details: margin, rationale, ...

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model,
            "answer": self.answer,
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "latency_ms": self.latency_ms,
            "outcome": self.outcome,
        }
        if self.action is not None:
            d["action"] = self.action
        if self.scores:
            d["scores"] = {k: round(v, 4) for k, v in self.scores.items()}
        d.update(self.extra)
        return d
