"""Decision semantics as plain functions over plain data (DESIGN section 3).

Event validation, the confidence gate, the circuit breaker, approval policy and the
decision record. The engine (``agentd.engine``) does the I/O around them.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentd.errors import InputError
from agentd.untrusted import check_value

if TYPE_CHECKING:
    from agentd.config import FieldSpec, SkillConfig, StageConfig
    from agentd.stages.base import StageAnswer

EVENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
ACCEPTED = "accepted"


def new_id() -> str:
    return uuid.uuid4().hex


def check_event_id(event_id: Any) -> str:
    """A caller-given event id, validated; InputError otherwise."""
    if not isinstance(event_id, str) or not EVENT_ID_RE.fullmatch(event_id):
        raise InputError(
            f"event id {str(event_id)[:40]!r} is invalid: use 1-128 characters of letters, digits and ._:@/- "
            "starting with a letter or digit"
        )
    return event_id


def validate_event(skill: SkillConfig, data: Any) -> dict[str, Any]:
    """The event's fields, type-checked and range-checked against the skill's input schema.

    Numbers become floats (integers ints), missing optional fields take their default,
    unknown fields are refused so that a typo never silently reaches a rule.
    """
    if not isinstance(data, dict):
        raise InputError(f"{skill.name}: event data must be a JSON object, not {type(data).__name__}")
    unknown = set(data) - set(skill.input)
    if unknown:
        names = ", ".join(sorted(repr(str(k))[:40] for k in unknown)[:5])
        raise InputError(f"{skill.name}: unknown field(s) {names} (known: {', '.join(skill.input)})")
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name, spec in skill.input.items():
        try:
            out[name] = _field(skill.name, name, spec, data)
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        raise InputError("; ".join(problems))
    return out


def _field(skill_name: str, name: str, spec: FieldSpec, data: dict[str, Any]) -> Any:
    """One field, checked and normalised; InputError naming it otherwise."""
    if name not in data or data[name] is None:
        if spec.required and spec.default is None:
            raise InputError(f"{skill_name}: missing required field {name!r} ({spec.type})")
        if spec.default is not None:
            return spec.default
        return "" if spec.type == "string" else (False if spec.type == "boolean" else 0)
    value = data[name]
    if spec.type in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{skill_name}.{name}: expected a number, got {type(value).__name__}")
        check_value(value, what=f"{skill_name}.{name}")  # finite, and within what canonical JSON carries exactly
        if spec.type == "integer":
            if isinstance(value, float) and not value.is_integer():
                raise InputError(f"{skill_name}.{name}: expected an integer, got {value}")
            value = int(value)
        else:
            value = float(value)
        if spec.min is not None and value < spec.min:
            raise InputError(f"{skill_name}.{name}: {value} is below the minimum {spec.min}")
        if spec.max is not None and value > spec.max:
            raise InputError(f"{skill_name}.{name}: {value} is above the maximum {spec.max}")
    elif spec.type == "string":
        if not isinstance(value, str):
            raise InputError(f"{skill_name}.{name}: expected a string, got {type(value).__name__}")
        if len(value) > spec.max_length:
            raise InputError(f"{skill_name}.{name}: {len(value)} characters, over the limit of {spec.max_length}")
        check_value(value, what=f"{skill_name}.{name}")  # no lone surrogates: the record must be signable
    elif not isinstance(value, bool):
        raise InputError(f"{skill_name}.{name}: expected true or false, got {type(value).__name__}")
    return value


def gate(answer: StageAnswer, stage: StageConfig, actions: list[str]) -> tuple[str | None, str]:
    """Map a model answer to an action and apply the confidence gate.

    Returns ``(action, "accepted")`` or ``(None, reason)`` with reason ``invalid_output``
    (the label maps to no allowed action) or ``low_confidence``.
    """
    action = stage.map.get(answer.label, answer.label)
    if action not in actions:
        return None, "invalid_output"
    if not (answer.confidence >= stage.min_confidence):  # NaN fails too
        return None, "low_confidence"
    return action, ACCEPTED


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
