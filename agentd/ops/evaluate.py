"""`agentd eval`: a labelled set run through a skill in-process, measured path by path.

The set is JSON lines, ``{"skill": ..., "data": {...}, "label": "<action>"}`` with an optional
``"id"``; a bad line is refused with ``FILE:LINE`` (docs/QUALITY.md). Each skill's items go
through three kinds of path, on one engine over a copy of the config whose data directory
is a throw-away folder (the node's database is never touched):

- ``rules``: the engine in mode ``rules_only`` (rules, guards, approval);
- ``stage:<model>``: each cascade stage alone, through the engine's own stage runner: its
  answer mapped through the stage's ``map``, "covered" when it passes the stage's gates
  (``decision.policy.gate``: an action, in distribution, confident enough);
- ``cascade``: the engine in mode ``auto``, as in production.

Every item is decided as if it were the only one: the fleet view the rules see
(``fleet_count``, ``fleet_value``) is empty for each, and every circuit breaker closed. For a pending approval the action
counted is the requested one, and why a human was asked is the approval's ``because``
(``action`` where the record does not say). The metrics are those of ``agentd.decision.quality``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.decision import quality
from agentd.decision.fleet import FleetView
from agentd.decision.policy import ACCEPTED, StageTrace
from agentd.decision.validate import validate_event
from agentd.errors import ConfigError, InputError
from agentd.trust.untrusted import parse_json

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig
    from agentd.config.schema import Config, SkillConfig, StageConfig
    from agentd.decision.engine import Engine

MAX_LINE_BYTES = 1024 * 1024
MAX_ID_CHARS = 128
KEYS = ("skill", "data", "label", "id")
PENDING = "pending_approval"


@dataclass(frozen=True)
class Item:
    """One labelled event: where it came from, its validated fields and the right action."""

    line: int
    id: str
    skill: str
    fields: dict[str, Any]
    label: str


@dataclass(frozen=True)
class Outcome:
    """What one path did with one item: the action it counts (None: no answer) and its confidence."""

    predicted: str | None
    confidence: float | None
    covered: bool
    detail: dict[str, Any] = field(default_factory=dict)


def read_items(path: Path, config: Config, *, skill: str | None = None, limit: int | None = None) -> list[Item]:
    """The labelled items of ``path`` (only ``skill``'s, at most ``limit``); InputError naming FILE:LINE."""
    if skill is not None:
        _skill(config, skill, f"--skill {skill}")
    items: list[Item] = []
    lines: dict[str, int] = {}
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the labelled set: {exc.strerror}") from exc
    with fh:
        lineno = 0
        while limit is None or len(items) < limit:
            raw = fh.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            lineno += 1
            where = f"{path}:{lineno}"
            if len(raw) > MAX_LINE_BYTES:
                raise InputError(f"{where}: line longer than {MAX_LINE_BYTES} bytes")
            if not raw.strip():
                continue
            item = _item(parse_json(raw, max_bytes=MAX_LINE_BYTES, what=where), config, lineno, where)
            if item.id in lines:
                raise InputError(f"{where}: id {item.id!r} repeats line {lines[item.id]}")
            lines[item.id] = lineno
            if skill is None or item.skill == skill:
                items.append(item)
    if not items:
        raise InputError(f"{path}: no labelled items" + (f" for skill {skill}" if skill else ""))
    return items


def _item(obj: Any, config: Config, lineno: int, where: str) -> Item:
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object {{\"skill\", \"data\", \"label\"}}, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(repr(k[:40]) for k in unknown[:5])} (known: {', '.join(KEYS)})")
    missing = [k for k in ("skill", "data", "label") if k not in obj]
    if missing:
        raise InputError(f"{where}: missing {', '.join(missing)}")
    if not isinstance(obj["skill"], str):
        raise InputError(f"{where}: skill must be a string")
    sk = _skill(config, obj["skill"], where)
    label = obj["label"]
    if not isinstance(label, str) or label not in sk.actions:
        raise InputError(f"{where}: label {str(label)[:40]!r} is not an action of skill {sk.name} (actions: {', '.join(sk.actions)})")
    ident = obj.get("id", str(lineno))
    if isinstance(ident, bool) or not isinstance(ident, str | int) or not 0 < len(str(ident)) <= MAX_ID_CHARS:
        raise InputError(f"{where}: id must be a string of 1..{MAX_ID_CHARS} characters or an integer")
    try:
        fields = validate_event(sk, obj["data"])
    except InputError as exc:
        raise InputError(f"{where}: data: {exc}") from None
    return Item(line=lineno, id=str(ident), skill=sk.name, fields=fields, label=label)


def _skill(config: Config, name: str, where: str) -> SkillConfig:
    try:
        return config.skill(name)
    except ConfigError as exc:
        raise InputError(f"{where}: {exc}") from None


def eval_config(loaded: LoadedConfig, data_dir: Path, *, deadline_ms: float | None = None) -> LoadedConfig:
    """``loaded`` with its data in ``data_dir``, mode auto, and every skill's deadline ``deadline_ms`` if given."""
    cfg = loaded.config
    if deadline_ms is not None and deadline_ms <= cfg.daemon.deadline_reserve_ms:
        raise InputError(f"--deadline-ms {deadline_ms:g} must exceed daemon.deadline_reserve_ms ({cfg.daemon.deadline_reserve_ms:g})")
    skills = [s if deadline_ms is None else s.model_copy(update={"deadline_ms": float(deadline_ms)}) for s in cfg.skills]
    copy = cfg.model_copy(update={
        "node": cfg.node.model_copy(update={"data_dir": str(data_dir)}),
        "daemon": cfg.daemon.model_copy(update={"mode": "auto", "socket": str(data_dir / "agentd.sock")}),
        "state": cfg.state.model_copy(update={"synchronous": "normal"}),  # a throw-away database needs no fsync
        "skills": skills,
    })
    return dataclasses.replace(loaded, config=copy)


async def evaluate(loaded: LoadedConfig, items: list[Item], *, deadline_ms: float | None = None, per_item: bool = False) -> dict[str, Any]:
    """Run ``items`` through every path of their skills; the report `agentd eval --json` prints
    (with ``per_item``, each skill also lists every item's answer on every path under ``results``)."""
    from agentd.decision.engine import Engine
    from agentd.trust.keys import create_key

    by_skill: dict[str, list[Item]] = {}
    for item in items:
        by_skill.setdefault(item.skill, []).append(item)
    with tempfile.TemporaryDirectory(prefix="agentd-eval-") as tmp:
        ev = eval_config(loaded, Path(tmp), deadline_ms=deadline_ms)
        key, _ = create_key(Path(tmp))
        async with Engine(loaded=ev, key=key, run_handlers=False) as engine:
            skills = [await _evaluate_skill(engine, ev.config.skill(name), group, per_item) for name, group in by_skill.items()]
    return {"config": str(loaded.path), "items": len(items), "skills": skills}


async def _evaluate_skill(engine: Engine, skill: SkillConfig, items: list[Item], per_item: bool) -> dict[str, Any]:
    paths: list[dict[str, Any]] = []
    answers: dict[str, list[Outcome]] = {}
    # The stages first: a shadow started by a cascade decision must not queue ahead of a stage's own call.
    for stage_cfg in skill.cascade:
        outcomes = [await _stage_alone(engine, skill, stage_cfg, item.fields) for item in items]
        paths.append(_stage_summary(engine, skill, stage_cfg, items, outcomes))
        answers[paths[-1]["path"]] = outcomes
    await engine.set_mode("rules_only", by="eval")
    rules = [await _decided(engine, skill, item) for item in items]
    await engine.set_mode("auto", by="eval")
    cascade = [await _decided(engine, skill, item) for item in items]
    paths.insert(0, _decided_summary("rules", skill, items, rules))
    summary = _decided_summary("cascade", skill, items, cascade)
    asked_only = sum(c.detail["asked"] and not r.detail["asked"] for c, r in zip(cascade, rules, strict=True))
    summary["asked_not_by_rules"] = {"count": asked_only, "share": _share(asked_only, len(items))}
    paths.append(summary)
    out: dict[str, Any] = {
        "skill": skill.name,
        "items": len(items),
        "deadline_ms": skill.deadline_ms,
        "actions": list(skill.actions),
        "labels": {a: n for a in skill.actions if (n := sum(i.label == a for i in items))},
        "paths": paths,
    }
    if per_item:
        answers = {"rules": rules, **answers, "cascade": cascade}
        out["results"] = [
            {"id": item.id, "line": item.line, "label": item.label,
             "paths": {name: _result(outcomes[n]) for name, outcomes in answers.items()}}
            for n, item in enumerate(items)
        ]
    return out


def _result(o: Outcome) -> dict[str, Any]:
    return {"predicted": o.predicted, "confidence": _round(o.confidence), "covered": o.covered,
            **{k: v for k, v in o.detail.items() if v not in (None, False, 0) or k == "asked"}}


async def _stage_alone(engine: Engine, skill: SkillConfig, stage_cfg: StageConfig, fields: dict[str, Any]) -> Outcome:
    """One stage's answer through the engine's own stage runner (map, input and confidence gates),
    as if it were the cascade's first stage: the deadline less the reserve."""
    _close_circuits(engine)
    trace = StageTrace(model=stage_cfg.model)
    late: list[Any] = []
    stop_at = time.monotonic() + (skill.deadline_ms - engine.cfg.daemon.deadline_reserve_ms) / 1000
    outcome, _ = await engine._run_stage(skill, stage_cfg, stage_cfg.model, fields, stop_at, trace, late)
    detail: dict[str, Any] = {"outcome": outcome}
    if "ood_score" in trace.extra:
        detail["ood_score"] = trace.extra["ood_score"]
    return Outcome(trace.action, trace.confidence, outcome == ACCEPTED, detail)


def _close_circuits(engine: Engine) -> None:
    """Each item alone: a timeout on one item must not open a circuit for the next."""
    for breaker in engine.circuits.values():
        breaker.success()


async def _decided(engine: Engine, skill: SkillConfig, item: Item) -> Outcome:
    """The engine's decision on one item, in the engine's current mode."""
    engine.fleet = FleetView()  # each item alone: no fleet history from the items before it
    _close_circuits(engine)
    record = await engine.decide(skill.name, item.fields, origin="eval")
    approval = record.get("approval") or {}
    asked = record["status"] == PENDING
    predicted = approval.get("requested_action", record["action"]) if asked else record["action"]
    confidence = record["confidence"] if record["source"] == "model" else None
    detail = {
        "asked": asked,
        "asked_reason": (approval.get("because") or approval.get("reason") or "action") if asked else None,
        "source": record["source"],
        "fallback_reason": record.get("fallback_reason"),
        "guard": record.get("guard"),
        "rule": record.get("rule"),
        "rule_errors": len(record.get("rule_errors") or ()),
    }
    return Outcome(predicted, confidence, True, detail)


def measure(items: list[Item], outcomes: list[Outcome], actions: list[str], *, confidence: bool) -> dict[str, Any]:
    """Coverage, accuracy, confusion (of covered items) and, with ``confidence``, calibration and risk-coverage
    over the items that have a confidence (``None`` where none does)."""
    pairs = list(zip(items, outcomes, strict=True))
    cov = quality.coverage((o.covered, o.predicted == i.label) for i, o in pairs)
    scored = [(o.confidence, o.predicted == i.label) for i, o in pairs if o.confidence is not None]
    cal = quality.calibration(scored) if confidence else None
    curve = quality.risk_coverage(scored) if confidence else None
    return {
        "items": cov.total,
        "covered": cov.covered,
        "coverage": _round(cov.coverage),
        "correct": cov.correct,
        "accuracy": _round(cov.accuracy),
        "confusion": quality.confusion(((i.label, o.predicted) for i, o in pairs if o.covered and o.predicted is not None), actions),
        "calibration": None if cal is None else cal.as_dict(),
        "risk_coverage": None if curve is None else curve.as_dict(),
    }


def _stage_summary(engine: Engine, skill: SkillConfig, stage_cfg: StageConfig, items: list[Item], outcomes: list[Outcome]) -> dict[str, Any]:
    stage = engine.stages.get(stage_cfg.model)
    answered = [(i, o) for i, o in zip(items, outcomes, strict=True) if o.confidence is not None]
    return {
        "path": f"stage:{stage_cfg.model}",
        "model": stage_cfg.model,
        "version": None if stage is None else stage.version,
        "shadow": stage_cfg.shadow,
        "min_confidence": stage_cfg.min_confidence,
        **measure(items, outcomes, list(skill.actions), confidence=True),
        "answered": len(answered),
        "raw_accuracy": _round(_share(sum(o.predicted == i.label for i, o in answered), len(answered))),
        "outcomes": _counts(o.detail["outcome"] for o in outcomes),
        "missing_reason": None if stage is None or stage.available else stage.missing_reason,
    }


def _decided_summary(name: str, skill: SkillConfig, items: list[Item], outcomes: list[Outcome]) -> dict[str, Any]:
    asked = [o for o in outcomes if o.detail["asked"]]
    out = {
        "path": name,
        **measure(items, outcomes, list(skill.actions), confidence=name != "rules"),
        "asked": {"count": len(asked), "share": _share(len(asked), len(outcomes)), "reasons": _counts(o.detail["asked_reason"] for o in asked)},
        "sources": _counts(o.detail["source"] for o in outcomes),
        "fallback_reasons": _counts(o.detail["fallback_reason"] for o in outcomes if o.detail["fallback_reason"]),
        "guards": _counts(o.detail["guard"] for o in outcomes if o.detail["guard"]),
        "rule_errors": sum(o.detail["rule_errors"] for o in outcomes),
    }
    if name == "rules":
        out["rules"] = _counts(o.detail["rule"] for o in outcomes if o.detail["rule"])
    return out


def _counts(values: Any) -> dict[str, int]:
    return dict(Counter(str(v) for v in values).most_common())


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
