"""Quality on the node: every model version and the rules, measured on the decisions people labelled.

`agentd report` shows it. The labelled decisions and the shadow answers on them come from
``agentd.state.labels`` as plain data; the metrics are ``agentd.decision.quality``'s, as
`agentd eval` computes them on a labelled set (docs/QUALITY.md). A decision counts with its
latest label. Per skill, one row per:

- **acted** stage, per model version (the version stamped on the decision): its answer on
  the decision's trace (``stages[i].action``, ``confidence``), gate passed or not;
- **shadow** stage, per model version: its answer stored beside the decision;
- **rules**, per rule set (the config the decision was made under): what the rules
  answered (``rules_action``).

A stage row counts the labelled decisions it ran on, those it answered (gave a confidence)
and the share right among them (``accuracy``), the answers that passed its gates
(``accepted``) and the share right among those, the confusion matrix (rows: the label,
columns: the answer), how often its answer was the rules' on the same decision
(``rules_agreement``), calibration (ECE over 10 reliability bins) and the risk-coverage curve
with its AURC over its answers. The rules row has accuracy and confusion (no confidence).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentd.decision import quality
from agentd.decision.policy import rules_action
from agentd.state import labels

if TYPE_CHECKING:
    import sqlite3

    from agentd.config.schema import Config, SkillConfig
    from agentd.state.queries import DecisionFilter

ACCEPTED = ("accepted", "disagreement")  # outcomes of an answer that passed the stage's gates
ROLES = ("acted", "shadow", "rules")


@dataclass(frozen=True, slots=True)
class Answer:
    """One path's answer on one labelled decision."""

    label: str
    action: str | None
    confidence: float | None
    accepted: bool
    rules: str | None  # the rules' answer on the same decision, where known
    source: str  # where the label came from: operator, approval, rejection


def _skill(config: Config, name: str) -> SkillConfig | None:
    return next((s for s in config.skills if s.name == name), None)


def _confidence(value: Any) -> float | None:
    """A confidence the metrics can use (a number in [0, 1]), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        return None
    return float(value)


def collect(config: Config, rows: list[labels.Labelled]) -> dict[tuple[str, str, str, str], list[Answer]]:
    """The answers per ``(skill, role, model, version)``; the rules' model is ``rules`` and their
    version the first 12 hex digits of the config's sha256."""
    groups: dict[tuple[str, str, str, str], list[Answer]] = defaultdict(list)
    for row in rows:
        rec = row.record
        name = str(rec.get("skill", "?"))
        life = rec.get("lifecycle") or {}
        rules = rules_action(rec, _skill(config, name))
        versions = life.get("models") or {}
        for st in rec.get("stages") or []:
            model = str(st.get("model", "?"))
            groups[name, "acted", model, str(versions.get(model, "?"))].append(Answer(
                row.label, st.get("action"), _confidence(st.get("confidence")), st.get("outcome") in ACCEPTED, rules, row.source))
        for sh in row.shadows:
            groups[name, "shadow", str(sh["model"]), str(sh["version"])].append(Answer(
                row.label, sh["action"], _confidence(sh["confidence"]), sh["outcome"] in ACCEPTED, rules, row.source))
        groups[name, "rules", "rules", str(life.get("config_sha256") or "?")[:12]].append(
            Answer(row.label, rules, None, rules is not None, None, row.source))
    return groups


def measure(answers: list[Answer], actions: list[str], *, rules: bool = False) -> dict[str, Any]:
    """The figures of one row (see the module's docstring)."""
    answered = [a for a in answers if (a.action is not None if rules else a.confidence is not None)]
    accepted = [a for a in answered if a.accepted]
    beside = [a for a in answered if a.action is not None and a.rules is not None]
    scored = [(a.confidence, a.action == a.label) for a in answered if a.confidence is not None]
    cal = None if rules else quality.calibration(scored)
    curve = None if rules else quality.risk_coverage(scored)
    correct = sum(a.action == a.label for a in answered)
    return {
        "labelled": len(answers),
        "answered": len(answered),
        "correct": correct,
        "accuracy": _share(correct, len(answered)),
        "accepted": None if rules else len(accepted),
        "accepted_accuracy": None if rules else _share(sum(a.action == a.label for a in accepted), len(accepted)),
        "confusion": quality.confusion(((a.label, a.action) for a in answered if a.action is not None), actions),
        "beside_rules": None if rules else len(beside),
        "rules_agreement": None if rules else _share(sum(a.action == a.rules for a in beside), len(beside)),
        "calibration": None if cal is None else cal.as_dict(),
        "risk_coverage": None if curve is None else curve.as_dict(),
        "label_sources": dict(Counter(a.source for a in answers).most_common()),
    }


def report(conn: sqlite3.Connection, config: Config, filters: DecisionFilter, *, limit: int = 50_000) -> list[dict[str, Any]]:
    """One row per skill and path (acted or shadow model version, or rule set) over the newest
    ``limit`` labelled decisions that ``filters`` select: what `agentd report` shows under ``labelled``."""
    groups = collect(config, labels.labelled(conn, filters, limit=limit))
    out = []
    for (name, role, model, version), answers in sorted(groups.items(), key=lambda kv: (kv[0][0], ROLES.index(kv[0][1]), *kv[0][2:])):
        skill = _skill(config, name)
        out.append({"skill": name, "role": role, "model": model, "version": version,
                    **measure(answers, list(skill.actions) if skill else [], rules=role == "rules")})
    return out


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None
