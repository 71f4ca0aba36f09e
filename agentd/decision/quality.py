"""How good a decision path is on labelled data: plain functions over plain data, no I/O.

Used by `agentd eval` (``agentd.ops.evaluate``) on labelled sets, and meant for
`agentd report` on operator labels. The inputs are pairs: ``(label, predicted)`` for a
confusion matrix, ``(confidence, correct)`` for calibration and the risk-coverage curve.

- **coverage**: the share of items a path acted on (a stage: its answer passed its gate);
  **accuracy**: the share right among those.
- **ECE** (expected calibration error): confidences in ``bins`` equal-width bins; the
  item-weighted mean gap between each bin's mean confidence and its accuracy.
- **risk-coverage**: items sorted by confidence, most confident first; the risk at
  coverage ``k/n`` is the error rate among the top ``k``. Items of equal confidence are
  one group whose errors are spread evenly, so the curve does not depend on input order.
  **AURC** is the mean risk over ``k = 1..n`` (lower is better).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Scored = tuple[float, bool]  # (confidence, correct)


@dataclass(frozen=True)
class Coverage:
    """How many items a path saw, acted on (``covered``) and got right among those."""

    total: int
    covered: int
    correct: int

    @property
    def coverage(self) -> float | None:
        return self.covered / self.total if self.total else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.covered if self.covered else None


def coverage(items: Iterable[tuple[bool, bool]]) -> Coverage:
    """Counts over ``(covered, correct)`` pairs; ``correct`` counts only where ``covered``."""
    total = covered = correct = 0
    for is_covered, is_correct in items:
        total += 1
        if is_covered:
            covered += 1
            correct += bool(is_correct)
    return Coverage(total=total, covered=covered, correct=correct)


def confusion(pairs: Iterable[tuple[str, str]], labels: Sequence[str] = ()) -> dict[str, dict[str, int]]:
    """``matrix[label][predicted]``: counts, with a row and a column for every one of ``labels``
    (zeros included, in that order) and for any other value seen, after them."""
    seen = list(dict.fromkeys(labels))
    counts: dict[tuple[str, str], int] = {}
    for label, predicted in pairs:
        for value in (label, predicted):
            if value not in seen:
                seen.append(value)
        counts[label, predicted] = counts.get((label, predicted), 0) + 1
    return {row: {col: counts.get((row, col), 0) for col in seen} for row in seen}


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: ``lo <= confidence < hi`` (the last bin includes 1)."""

    lo: float
    hi: float
    count: int
    confidence: float | None  # the mean confidence in the bin; None when empty
    accuracy: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "count": self.count, "confidence": _r(self.confidence), "accuracy": _r(self.accuracy)}


@dataclass(frozen=True)
class Calibration:
    """ECE, the largest bin gap (MCE) and the bins they come from."""

    n: int
    ece: float
    mce: float
    bins: tuple[ReliabilityBin, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "ece": _r(self.ece), "mce": _r(self.mce), "bins": [b.as_dict() for b in self.bins]}


def calibration(scored: Sequence[Scored], bins: int = 10) -> Calibration | None:
    """ECE with ``bins`` equal-width reliability bins over ``(confidence, correct)``; None if empty.

    A confidence must lie in [0, 1] (ValueError otherwise).
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    if not scored:
        return None
    sums = [0.0] * bins
    hits = [0] * bins
    counts = [0] * bins
    for conf, correct in scored:
        _check(conf)
        i = min(int(conf * bins), bins - 1)
        sums[i] += conf
        hits[i] += bool(correct)
        counts[i] += 1
    out = []
    ece = mce = 0.0
    for i in range(bins):
        n = counts[i]
        mean = sums[i] / n if n else None
        acc = hits[i] / n if n else None
        if mean is not None and acc is not None:
            gap = abs(acc - mean)
            ece += n / len(scored) * gap
            mce = max(mce, gap)
        out.append(ReliabilityBin(lo=round(i / bins, 6), hi=round((i + 1) / bins, 6), count=n, confidence=mean, accuracy=acc))
    return Calibration(n=len(scored), ece=ece, mce=mce, bins=tuple(out))


@dataclass(frozen=True)
class CurvePoint:
    """The risk at ``coverage`` (``k`` items of ``n``); ``threshold`` is the k-th highest confidence,
    so a gate ``min_confidence = threshold`` covers at least these ``k`` items."""

    coverage: float
    k: int
    risk: float
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {"coverage": self.coverage, "k": self.k, "risk": _r(self.risk), "threshold": _r(self.threshold)}


@dataclass(frozen=True)
class RiskCoverage:
    """The risk-coverage curve at ``steps`` even coverages, and the area under the full curve."""

    n: int
    aurc: float
    points: tuple[CurvePoint, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "aurc": _r(self.aurc), "points": [p.as_dict() for p in self.points]}


def risk_curve(scored: Sequence[Scored]) -> list[float]:
    """``risk[k-1]``: the error rate among the ``k`` most confident items, for ``k = 1..n``
    (ties spread evenly: a group of equal confidence contributes its error rate per item)."""
    ordered = sorted(scored, key=lambda s: -_check(s[0]))
    risks: list[float] = []
    errors = 0.0
    i = 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j][0] == ordered[i][0]:
            j += 1
        group_rate = sum(not c for _, c in ordered[i:j]) / (j - i)
        for _ in range(i, j):
            errors += group_rate
            risks.append(errors / (len(risks) + 1))
        i = j
    return risks


def risk_coverage(scored: Sequence[Scored], steps: int = 10) -> RiskCoverage | None:
    """The curve at coverage ``1/steps, 2/steps, ..., 1`` (k = ceil(coverage * n)) and its AURC; None if empty."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if not scored:
        return None
    n = len(scored)
    risks = risk_curve(scored)
    confidences = sorted((s[0] for s in scored), reverse=True)
    points = []
    for step in range(1, steps + 1):
        k = max(1, -(-step * n // steps))  # ceil without floats
        points.append(CurvePoint(coverage=round(step / steps, 6), k=k, risk=risks[k - 1], threshold=confidences[k - 1]))
    return RiskCoverage(n=n, aurc=math.fsum(risks) / n, points=tuple(points))


def _check(conf: float) -> float:
    if not 0.0 <= conf <= 1.0:  # NaN fails too
        raise ValueError(f"confidence {conf!r} is outside [0, 1]")
    return conf


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
