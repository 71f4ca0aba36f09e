"""The input card (agentd.stages.card): built from training rows, it scores new inputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from agentd.errors import ModelError
from agentd.stages.card import InputCard, Verdict, build_card

INPUTS = ["temperature_c", "door_open_s"]


def two_clusters(n: int, seed: int = 1) -> list[dict[str, float]]:
    """A cold closed box and a warmer one with the door open: two clusters, as a classifier's classes make."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2:
            rows.append({"temperature_c": rng.gauss(-20, 0.8), "door_open_s": abs(rng.gauss(5, 3))})
        else:
            rows.append({"temperature_c": rng.gauss(-8, 1.0), "door_open_s": rng.gauss(400, 40)})
    return rows


def test_training_rows_score_inside_and_far_inputs_outside() -> None:
    rows = two_clusters(1000)
    card = InputCard(build_card(rows, INPUTS, quantile=0.99))
    fresh = two_clusters(400, seed=2)
    inside = sum(not card.check(r).outside(1.0) for r in fresh)
    assert inside >= 0.95 * len(fresh)  # the threshold is the training rows' own 99th percentile
    # Between the clusters, within every field's range: only the joint score can tell.
    between = card.check({"temperature_c": -14.0, "door_open_s": 200.0})
    assert between.field is None and between.score > 1.0
    # Beyond a field's training range: out whatever the joint score says, and the field is named.
    hot = card.check({"temperature_c": 30.0, "door_open_s": 5.0})
    assert hot.field == "temperature_c" and hot.outside(1.0)


def test_verdict_outside_treats_nan_as_out() -> None:
    assert Verdict(float("nan")).outside(1.0)
    assert not Verdict(0.5).outside(1.0)
    assert Verdict(0.5, "x").outside(1.0)


def test_card_round_trips_through_a_file_and_checks_the_inputs(tmp_path: Path) -> None:
    path = tmp_path / "m.card.json"
    path.write_text(json.dumps(build_card(two_clusters(200), INPUTS, model="m")))
    card = InputCard.load(path, INPUTS)
    assert card.inputs == tuple(INPUTS) and card.samples == 200
    with pytest.raises(ModelError, match="describes inputs"):
        InputCard.load(path, ["door_open_s", "temperature_c"])
    path.write_text('{"kind": "something else"}')
    with pytest.raises(ModelError, match="not a valid input card"):
        InputCard.load(path, INPUTS)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"temperature_c": 1.0, "door_open_s": 2.0}] * 5, "at least"),
        ([{"temperature_c": 1.0}] * 50, "no field 'door_open_s'"),
        ([{"temperature_c": "warm", "door_open_s": 1.0}] * 50, "non-numeric"),
        ([{"temperature_c": float("nan"), "door_open_s": 1.0}] * 50, "NaN"),
    ],
)
def test_build_card_refuses_unusable_training_data(rows: list[dict[str, object]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_card(rows, INPUTS)  # type: ignore[arg-type]


def test_reference_rows_are_capped() -> None:
    card = build_card(two_clusters(3000), INPUTS)
    assert card["samples"] == 3000 and len(card["joint"]["points"]) == 2000


def _reference_score(card: InputCard, values: list[float]) -> float:
    """The score as the card defines it, written plainly: the k-th smallest distance over the threshold."""
    z = (np.array(values, dtype=np.float64) - card.center) / card.scale
    d = np.sqrt(((card.points - z) ** 2).sum(axis=1))
    return float(np.partition(d, card.k - 1)[card.k - 1]) / card.threshold


@pytest.mark.parametrize("n_inputs", [1, 3, 7, 8, 11])
def test_the_fast_score_is_the_plain_formula_bit_for_bit(n_inputs: int) -> None:
    rng = random.Random(n_inputs)
    names = [f"f{i}" for i in range(n_inputs)]
    rows = [{f: rng.gauss(i, 1 + i) for i, f in enumerate(names)} for _ in range(300)]
    card = InputCard(build_card(rows, names, k=5))
    shipped = Path(__file__).resolve().parent.parent.parent / "models" / "freezer_anomaly.card.json"
    cards = [card, InputCard(json.loads(shipped.read_text()))] if n_inputs == 3 else [card]
    for c in cards:
        for _ in range(2000):
            values = [rng.gauss(0, 10) * rng.choice((0.1, 1, 10)) for _ in c.inputs]
            verdict = c.check(dict(zip(c.inputs, values, strict=True)))
            assert verdict.score == _reference_score(c, values)


@pytest.mark.parametrize("n_inputs", [1, 3, 8])
def test_a_batch_of_rows_gets_the_same_verdicts_as_one_at_a_time(n_inputs: int) -> None:
    rng = random.Random(100 + n_inputs)
    names = [f"f{i}" for i in range(n_inputs)]
    card = InputCard(build_card([{f: rng.gauss(i, 1 + i) for i, f in enumerate(names)} for _ in range(300)], names,
                                k=5, range_margin=0.05))
    rows = [[rng.gauss(0, 10) * rng.choice((0.1, 1, 10)) for _ in names] for _ in range(500)]
    one_by_one = [card.check(dict(zip(names, r, strict=True))) for r in rows]
    batched = [v for i in range(0, len(rows), 64) for v in card.check_rows(np.array(rows[i:i + 64], dtype=np.float64))]
    assert batched == one_by_one  # scores equal to the last bit, and the same field named out of range
    assert any(v.field is not None for v in batched) and any(v.field is None and v.score > 1 for v in batched)
