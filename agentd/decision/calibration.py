"""Calibration from labels: a temperature per model version, fitted on what operators said was right.

A stage's answer is a distribution over its labels. Temperature scaling (Guo et al. 2017)
rescales it, ``p_i ** (1 / T)`` renormalised: ``T > 1`` softens an overconfident model,
``T < 1`` sharpens a timid one, and the ranking of the labels never changes, so the
answer stays the same and only its confidence (which the gate reads) moves. ``fit`` picks
the ``T`` that minimises the negative log-likelihood of the labelled actions; the ECE
before and after is kept with it, so `agentd report` and the stage trace can show what the
fit did. Plain functions, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agentd.decision.quality import calibration

MIN_LABELS = 20  # fewer labelled answers say too little to fit on
T_RANGE = (0.05, 20.0)
EPS = 1e-6


@dataclass(frozen=True)
class Labelled:
    """One labelled answer of a stage: its scores per action (labels already mapped), and the right action."""

    scores: Mapping[str, float]
    action: str


@dataclass(frozen=True)
class Fit:
    temperature: float
    labels: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float

    def as_dict(self) -> dict[str, float | int]:
        return {"temperature": round(self.temperature, 4), "labels": self.labels, "ece_before": round(self.ece_before, 4),
                "ece_after": round(self.ece_after, 4), "nll_before": round(self.nll_before, 4), "nll_after": round(self.nll_after, 4)}


def rescale(scores: Mapping[str, float], temperature: float) -> dict[str, float]:
    """``scores`` at ``temperature`` (a distribution again; the top label is unchanged)."""
    powered = {k: max(v, EPS) ** (1.0 / temperature) for k, v in scores.items()}
    total = sum(powered.values())
    return {k: v / total for k, v in powered.items()}


def nll_at(items: Sequence[Labelled], t: float) -> float:
    """The mean negative log-likelihood of the labelled actions at temperature ``t``."""
    return _nll(items, t)


def nll_gain(items: Sequence[Labelled], t: float) -> tuple[float, float]:
    """How much more likely temperature ``t`` makes the labelled actions than no temperature: the
    mean per-label drop in negative log-likelihood, and its one-sided 95 % lower bound (normal
    approximation over the labels). A bound above 0 says the gain is more than the noise of
    this many labels."""
    gains = [-math.log(max(rescale(i.scores, 1.0).get(i.action, 0.0), EPS)) + math.log(max(rescale(i.scores, t).get(i.action, 0.0), EPS))
             for i in items]
    n = len(gains)
    mean = sum(gains) / n
    sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / (n - 1)) if n > 1 else math.inf
    return mean, mean - 1.645 * sd / math.sqrt(n)


def _nll(items: Sequence[Labelled], t: float) -> float:
    return -sum(math.log(max(rescale(i.scores, t).get(i.action, 0.0), EPS)) for i in items) / len(items)


def ece_at(items: Sequence[Labelled], t: float) -> float:
    """The ECE of ``items`` at temperature ``t``."""
    scored = []
    for i in items:
        p = rescale(i.scores, t)
        top = max(p, key=p.__getitem__)
        scored.append((p[top], top == i.action))
    cal = calibration(scored)
    return cal.ece if cal is not None else 0.0


def fit(items: Sequence[Labelled], *, min_labels: int = MIN_LABELS) -> Fit | None:
    """The temperature minimising the labelled actions' NLL (golden-section search on log T), or
    None with fewer than ``min_labels`` items."""
    if len(items) < max(1, min_labels):
        return None
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(items, math.exp(a)), _nll(items, math.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(items, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(items, math.exp(b))
    t = math.exp((lo + hi) / 2)
    return Fit(temperature=t, labels=len(items), ece_before=ece_at(items, 1.0), ece_after=ece_at(items, t),
               nll_before=_nll(items, 1.0), nll_after=_nll(items, t))


def action_scores(scores: Mapping[str, float], label_to_action: Mapping[str, str], actions: Sequence[str]) -> dict[str, float]:
    """A stage's label scores as scores per action (labels mapping to one action add up; others are dropped)."""
    out: dict[str, float] = {}
    for label, p in scores.items():
        action = label_to_action.get(label, label)
        if action in actions:
            out[action] = out.get(action, 0.0) + p
    return out
