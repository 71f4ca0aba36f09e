"""A model's input card: the statistics of the inputs it was trained on, and the
out-of-distribution score of a new input against them.

A model is only trusted on inputs like the ones it learnt from. The card records, per
input field, the training range and quantiles, and for the joint distribution a sample of
the training rows (standardised) with the distance from a training row to its k-th
nearest neighbour at a high quantile. A new input's score is its k-th nearest-neighbour
distance divided by that threshold: above 1 it lies where hardly any training row did
(a kNN score copes with the several clusters a classifier's classes make, where a single
mean and covariance would not). A field outside its training range is out of
distribution whatever the joint score says.

``build_card`` writes a card from training rows (``agentd model card``); ``InputCard``
scores inputs at decision time (a few microseconds for a few thousand reference rows).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agentd.errors import ModelError
from agentd.stages.base import Verdict

CARD_KIND = "agentd-input-card"
CARD_VERSION = 1
MAX_REFERENCE_ROWS = 2000


class InputCard:
    """A loaded card: ``check(fields)`` gives the input's Verdict."""

    def __init__(self, doc: Mapping[str, Any], *, where: str = "card") -> None:
        try:
            if doc.get("kind") != CARD_KIND or doc.get("version") != CARD_VERSION:
                raise ValueError(f"not a {CARD_KIND} version {CARD_VERSION}")
            self.inputs: tuple[str, ...] = tuple(str(f) for f in doc["inputs"])
            fields = doc["fields"]
            self.ranges = {f: (float(fields[f]["min"]), float(fields[f]["max"])) for f in self.inputs}
            self.range_margin = float(doc.get("range_margin", 0.0))
            joint = doc["joint"]
            self.center = np.asarray(joint["center"], dtype=np.float64)
            self.scale = np.asarray(joint["scale"], dtype=np.float64)
            self.points = np.asarray(joint["points"], dtype=np.float64)
            self.k = int(joint["k"])
            self.threshold = float(joint["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{where}: not a valid input card ({exc})") from exc
        n = len(self.inputs)
        if self.center.shape != (n,) or self.scale.shape != (n,) or self.points.ndim != 2 or self.points.shape[1] != n:
            raise ModelError(f"{where}: input card shapes do not match its {n} inputs")
        if not (1 <= self.k < len(self.points)) or not self.threshold > 0 or not np.all(self.scale > 0):
            raise ModelError(f"{where}: input card has an unusable k, threshold or scale")
        self.samples = int(doc.get("samples", len(self.points)))
        # With fewer than 8 inputs numpy sums a row left to right, so a column at a time gives the
        # same distances bit for bit, without the (rows x inputs) temporaries: a third of the time.
        self._columns = [np.ascontiguousarray(self.points[:, i]) for i in range(n)] if n < 8 else None

    @classmethod
    def load(cls, path: Path, inputs: Sequence[str]) -> InputCard:
        """Read a card file; ModelError unless it describes exactly ``inputs``, in order."""
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"input card {path}: cannot read it ({exc})") from exc
        card = cls(doc, where=f"input card {path}")
        if list(card.inputs) != list(inputs):
            raise ModelError(f"input card {path} describes inputs {list(card.inputs)}, the model takes {list(inputs)}")
        return card

    def check(self, fields: Mapping[str, Any]) -> Verdict:
        """The Verdict for one event's fields (the model's inputs must all be numbers)."""
        values = [float(fields[f]) for f in self.inputs]
        return Verdict(self._score(np.array(values, dtype=np.float64)), self._outside(values))

    def _outside(self, values: Sequence[float]) -> str | None:
        """The first input outside its training range (with the margin), or None."""
        for f, v in zip(self.inputs, values, strict=True):
            lo, hi = self.ranges[f]
            pad = (hi - lo) * self.range_margin
            if not lo - pad <= v <= hi + pad:
                return f
        return None

    def check_rows(self, rows: np.ndarray) -> list[Verdict]:
        """The Verdicts of several inputs at once (``rows``: one float64 row of the inputs per event),
        each the same to the last bit as ``check`` gives: the distances are the same operations in
        the same order, a row at a time along a second axis, in a few large numpy operations instead
        of several small ones per event (each of which lets go of the GIL and must win it back)."""
        if self._columns is None:
            scores = [self._score(x) for x in rows]
        else:
            z = (rows - self.center) / self.scale
            d2 = (self._columns[0][None, :] - z[:, 0:1]) ** 2
            for i, column in enumerate(self._columns[1:], start=1):
                d2 += (column[None, :] - z[:, i:i + 1]) ** 2
            d2.partition(self.k - 1, axis=1)
            scores = [math.sqrt(v) / self.threshold for v in d2[:, self.k - 1].tolist()]
        return [Verdict(score, self._outside(values)) for values, score in zip(rows.tolist(), scores, strict=True)]

    def _score(self, x: np.ndarray) -> float:
        """The k-th nearest reference row's distance over the threshold (sqrt after the
        selection: it keeps the order, and IEEE sqrt rounds the same either way)."""
        z = (x - self.center) / self.scale
        if self._columns is None:
            d2 = ((self.points - z) ** 2).sum(axis=1)
        else:
            zs = z.tolist()
            d2 = (self._columns[0] - zs[0]) ** 2
            for column, zi in zip(self._columns[1:], zs[1:], strict=True):
                d2 += (column - zi) ** 2
        d2.partition(self.k - 1)
        return math.sqrt(float(d2[self.k - 1])) / self.threshold


def build_card(
    rows: Sequence[Mapping[str, Any]], inputs: Sequence[str], *, model: str = "", k: int = 5,
    quantile: float = 0.99, range_margin: float = 0.0, seed: int = 0,
) -> dict[str, Any]:
    """A card (JSON-ready dict) from training rows: each row maps every name in ``inputs`` to a number.

    ``quantile`` of the training rows' own k-NN distances (leave-one-out) is the joint
    threshold; ``range_margin`` widens each field's range by that share of its span.
    """
    if not inputs:
        raise ValueError("a card needs at least one input field")
    try:
        x = np.array([[float(r[f]) for f in inputs] for r in rows], dtype=np.float64)
    except KeyError as exc:
        raise ValueError(f"a training row has no field {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a training row has a non-numeric input: {exc}") from exc
    if len(x) < max(20, k + 2):
        raise ValueError(f"a card needs at least {max(20, k + 2)} training rows, got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise ValueError("training rows hold NaN or infinite values")
    if not 0.5 <= quantile < 1:
        raise ValueError("quantile must be in [0.5, 1)")
    center = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - center) / scale
    rng = np.random.default_rng(seed)
    points = z if len(z) <= MAX_REFERENCE_ROWS else z[rng.choice(len(z), MAX_REFERENCE_ROWS, replace=False)]
    # Leave-one-out: each reference row's distance to its k-th nearest *other* reference row.
    d = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2))
    kth = np.partition(d, k, axis=1)[:, k]  # column 0 is the row itself (distance 0)
    threshold = float(np.quantile(kth, quantile))
    if not threshold > 0:
        threshold = float(kth[kth > 0].min()) if np.any(kth > 0) else 1.0
    fields = {}
    for i, f in enumerate(inputs):
        col = x[:, i]
        fields[f] = {
            "min": _num(col.min()), "max": _num(col.max()), "mean": _num(col.mean()), "std": _num(col.std()),
            "quantiles": {q: _num(np.quantile(col, float(q))) for q in ("0.01", "0.05", "0.5", "0.95", "0.99")},
        }
    return {
        "kind": CARD_KIND, "version": CARD_VERSION, "model": model, "inputs": list(inputs), "samples": len(x),
        "range_margin": range_margin, "fields": fields,
        "joint": {
            "method": "knn", "k": k, "quantile": quantile, "threshold": _num(threshold),
            "center": [_num(v) for v in center], "scale": [_num(v) for v in scale],
            "points": [[_num(v) for v in row] for row in points],
        },
    }


def _num(v: Any) -> float:
    f = float(v)
    return 0.0 if math.isnan(f) else round(f, 6)
