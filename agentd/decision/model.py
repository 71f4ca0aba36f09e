"""The decision record (DESIGN section 3) as a type, and the closed vocabularies it uses.

``DecisionRecord.to_dict()`` is what is stored, hashed into the audit chain and signed, so
it must stay byte for byte what earlier versions wrote (a golden test holds it to records
written before this type existed). Fields may be added, never renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Source(StrEnum):
    """Who chose the action."""

    MODEL = "model"
    RULES = "rules"
    HUMAN = "human"
    GUARD = "guard"


class Status(StrEnum):
    DECIDED = "decided"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


class Mode(StrEnum):
    AUTO = "auto"
    RULES_ONLY = "rules_only"
    OBSERVE = "observe"
    MANUAL = "manual"


# Why a decision waits for a human (``approval.because``): a listed action, manual mode, or
# one of the cases where the model could not be trusted on the event.
ASK_REASONS = ("low_confidence", "out_of_distribution", "disagreement", "possible_severe")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


@dataclass(frozen=True)
class DecisionRecord:
    """One decision, as the engine makes it (``to_dict`` for the wire, the store and the audit)."""

    id: str
    event_id: str
    node: str
    skill: str
    action: str
    status: Status
    source: Source
    model: ModelRef | None
    confidence: float | None
    fallback_reason: str | None
    rule: str | None
    guard: str | None
    latency_ms: float
    stages: list[dict[str, Any]]
    hlc: str
    created_at: float
    lifecycle: dict[str, Any]
    mode: Mode
    origin: str
    inputs: dict[str, Any]
    late_answer: dict[str, Any] | None = None
    approval: dict[str, Any] | None = None  # present only while or after an approval was needed
    rule_errors: list[str] = field(default_factory=list)  # present only when a rule or guard failed
    rules_answer: dict[str, Any] | None = None  # the rules' answer beside an acting model's (present only then)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "event_id": self.event_id, "node": self.node, "skill": self.skill, "action": self.action,
            "status": str(self.status), "source": str(self.source),
            "model": self.model.to_dict() if self.model is not None else None,
            "confidence": self.confidence, "fallback_reason": self.fallback_reason, "rule": self.rule, "guard": self.guard,
            "latency_ms": self.latency_ms, "stages": self.stages, "late_answer": self.late_answer, "hlc": self.hlc,
            "created_at": self.created_at, "lifecycle": self.lifecycle, "mode": str(self.mode), "origin": self.origin,
            "inputs": self.inputs,
        }
        if self.approval is not None:
            out["approval"] = self.approval
        if self.rule_errors:
            out["rule_errors"] = self.rule_errors[:5]
        if self.rules_answer is not None:
            out["rules_answer"] = self.rules_answer
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecisionRecord:
        """A stored record back as a type (KeyError or ValueError if it is not one)."""
        m = d["model"]
        return cls(
            id=d["id"], event_id=d["event_id"], node=d["node"], skill=d["skill"], action=d["action"],
            status=Status(d["status"]), source=Source(d["source"]),
            model=ModelRef(m["name"], m["version"], m["sha256"]) if m is not None else None,
            confidence=d["confidence"], fallback_reason=d["fallback_reason"], rule=d["rule"], guard=d["guard"],
            latency_ms=d["latency_ms"], stages=d["stages"], hlc=d["hlc"], created_at=d["created_at"],
            lifecycle=d["lifecycle"], mode=Mode(d["mode"]), origin=d["origin"], inputs=d["inputs"],
            late_answer=d["late_answer"], approval=d.get("approval"), rule_errors=list(d.get("rule_errors", [])),
            rules_answer=d.get("rules_answer"),
        )
