"""Shadow answers and the stage report (read models over SQLite): evidence for promoting a model from canary to prod.

A shadow stage (``shadow: true`` in a skill's cascade) runs on the same events as the
acted cascade; its answer, confidence and latency are stored here and never acted on.
``report`` summarises every stage, shadow and acted, per model version and lifecycle
stage/release: agreement with the acted decision, confidence distribution, latency.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from agentd.state.queries import DecisionFilter
from agentd.stats import percentile


@dataclass(frozen=True, slots=True)
class ShadowAnswer:
    """What a shadow stage answered for one decision."""

    decision_id: str
    stage_index: int
    skill: str
    model: str
    version: str
    lifecycle_stage: str
    release: str
    outcome: str  # accepted, low_confidence, invalid_output, timeout, model_error, ...
    answer: str | None
    action: str | None  # the answer mapped to an action (None when it maps to none)
    confidence: float | None
    latency_ms: float | None
    acted_action: str  # what the node decided (the requested action while an approval is pending)


def insert(conn: sqlite3.Connection, a: ShadowAnswer) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO shadow_answers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (a.decision_id, a.stage_index, a.skill, a.model, a.version, a.lifecycle_stage, a.release, a.outcome,
         a.answer, a.action, a.confidence, a.latency_ms, a.acted_action, time.time()),
    )


def _pct(values: list[float], q: float) -> float | None:
    return round(percentile(values, q * 100), 4) if values else None


def report(conn: sqlite3.Connection, filters: DecisionFilter | None = None, *, limit: int = 50_000) -> list[dict[str, Any]]:
    """One row per (skill, model, version, role, lifecycle stage, release), newest decisions first.

    ``agreement`` is the share of *answered* calls whose action equals the acted one (read
    it with ``answered`` / ``calls``); ``confidence`` and ``latency_ms`` give p10/p50/p90 and
    p50/p99. ``filters`` takes skill, since and the lifecycle stage and release stamped on
    each decision (shadow answers have no source or status to filter on).
    """
    filters = filters or DecisionFilter()
    if filters.source is not None or filters.status is not None:
        raise ValueError("the stage report filters on skill, since, stage and release only")
    groups: dict[tuple[str, ...], dict[str, Any]] = defaultdict(
        lambda: {"outcomes": Counter(), "conf": [], "lat": [], "answered": 0, "agreed": 0}
    )

    def add(key: tuple[str, ...], outcome: str, action: str | None, acted: str, conf: float | None, lat: float | None,
            rules: str | None = None) -> None:
        g = groups[key]
        g["outcomes"][outcome] += 1
        if conf is not None:
            g["conf"].append(conf)
            g["answered"] += 1
            g["agreed"] += int(action == acted)
        if lat is not None:
            g["lat"].append(lat)
        if rules is not None:  # an accepted answer beside the rules' (issue 13)
            g["beside_rules"] = g.get("beside_rules", 0) + 1
            g["disagreed"] = g.get("disagreed", 0) + int(action != rules)

    # the same filters on both tables, whose lifecycle stage columns are named differently
    shadow_where, args = filters.where(stage_column="lifecycle_stage")
    decision_where, _ = filters.where()
    for row in conn.execute(
        f"SELECT skill, model, version, lifecycle_stage, release, outcome, action, acted_action, confidence, latency_ms"
        f" FROM shadow_answers WHERE {shadow_where} ORDER BY created_at DESC LIMIT ?", (*args, limit)
    ):
        sk, model, version, stage, release, outcome, action, acted, conf, lat = row
        add((sk, model, version, "shadow", stage, release), outcome, action, acted, conf, lat)
    decisions = f"SELECT record FROM decisions WHERE {decision_where} ORDER BY created_at DESC LIMIT ?"
    for (raw,) in conn.execute(decisions, (*args, limit)):
        rec = json.loads(raw)
        life = rec.get("lifecycle") or {}
        acted = (rec.get("approval") or {}).get("requested_action") or rec.get("action")
        rules = (rec.get("rules_answer") or {}).get("action")
        for st in rec.get("stages") or []:
            model = st.get("model", "?")
            version = str((life.get("models") or {}).get(model, "?"))
            action = st.get("action")  # the stage's answer mapped to an action, whether or not it was acted on
            beside = rules if st.get("outcome") in ("accepted", "disagreement") else None
            add((rec.get("skill", "?"), model, version, "acted", life.get("stage", "?"), life.get("release", "?")),
                st.get("outcome") or "?", action, acted, st.get("confidence"), st.get("latency_ms"), beside)
    out = []
    for (sk, model, version, role, stage, release), g in sorted(groups.items()):
        n = sum(g["outcomes"].values())
        out.append({
            "skill": sk, "model": model, "version": version, "role": role, "stage": stage, "release": release,
            "calls": n, "answered": g["answered"],
            "agreement": round(g["agreed"] / g["answered"], 4) if g["answered"] else None,
            "outcomes": dict(g["outcomes"]),
            "confidence": {"p10": _pct(g["conf"], 0.10), "p50": _pct(g["conf"], 0.50), "p90": _pct(g["conf"], 0.90)},
            "latency_ms": {"p50": _pct(g["lat"], 0.50), "p99": _pct(g["lat"], 0.99)},
            # accepted answers with the rules' answer beside them, and how many of those differed
            "beside_rules": g.get("beside_rules", 0), "disagreements": g.get("disagreed", 0),
        })
    return out


def decision_summary(conn: sqlite3.Connection, filters: DecisionFilter | None = None, *, limit: int = 50_000) -> list[dict[str, Any]]:
    """Per skill: who decided, why models fell back, and the share sent to a human and why (``approval.because``)."""
    where, args = (filters or DecisionFilter()).where()
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"decisions": 0, "sources": Counter(), "fallbacks": Counter(), "asked": Counter()})
    for (raw,) in conn.execute(f"SELECT record FROM decisions WHERE {where} ORDER BY created_at DESC LIMIT ?", (*args, limit)):
        rec = json.loads(raw)
        g = groups[rec.get("skill", "?")]
        g["decisions"] += 1
        g["sources"][rec.get("source", "?")] += 1
        if rec.get("fallback_reason"):
            g["fallbacks"][rec["fallback_reason"]] += 1
        approval = rec.get("approval")
        if approval is not None:
            g["asked"][approval.get("because", "action")] += 1
    return [{"skill": sk, "decisions": g["decisions"], "sources": dict(g["sources"]), "fallback_reasons": dict(g["fallbacks"]),
             "asked": sum(g["asked"].values()), "asked_share": round(sum(g["asked"].values()) / g["decisions"], 4),
             "asked_because": dict(g["asked"])} for sk, g in sorted(groups.items())]
