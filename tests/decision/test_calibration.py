"""Temperature scaling from labels (agentd.decision.calibration): pure functions."""

from __future__ import annotations

import random

import pytest

from agentd.decision.calibration import Labelled, action_scores, fit, nll_gain, rescale


def overconfident(n: int, accuracy: float, seed: int = 1) -> list[Labelled]:
    """A model that says 0.97 for its answer and is right ``accuracy`` of the time."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        scores = {"a": 0.97, "b": 0.02, "c": 0.01}
        right = rng.random() < accuracy
        items.append(Labelled(scores, "a" if right else rng.choice(["b", "c"])))
    return items


def test_rescale_keeps_the_ranking_and_moves_the_confidence() -> None:
    soft = rescale({"a": 0.9, "b": 0.1}, 3.0)
    sharp = rescale({"a": 0.9, "b": 0.1}, 0.5)
    assert soft["a"] > soft["b"] and sharp["a"] > sharp["b"]
    assert soft["a"] < 0.9 < sharp["a"] and sum(soft.values()) == pytest.approx(1.0)
    assert rescale({"a": 0.9, "b": 0.1}, 1.0)["a"] == pytest.approx(0.9)


def test_an_overconfident_model_is_softened_and_its_ece_falls() -> None:
    result = fit(overconfident(400, 0.7))
    assert result is not None and result.temperature > 1.5
    assert result.ece_before > 0.2 and result.ece_after < 0.05 and result.nll_after < result.nll_before
    held_out = overconfident(400, 0.7, seed=9)  # the fit carries over to answers it was not fitted on
    confidences = [rescale(i.scores, result.temperature)["a"] for i in held_out]
    assert sum(confidences) / len(confidences) == pytest.approx(0.7, abs=0.05)


def test_a_timid_model_is_sharpened() -> None:
    rng = random.Random(2)
    items = [Labelled({"a": 0.5, "b": 0.3, "c": 0.2}, "a" if rng.random() < 0.95 else "b") for _ in range(300)]
    result = fit(items)
    assert result is not None and result.temperature < 1.0 and result.ece_after < result.ece_before


def test_too_few_labels_fit_nothing() -> None:
    assert fit(overconfident(10, 0.7)) is None
    assert fit(overconfident(10, 0.7), min_labels=5) is not None


def test_label_scores_become_action_scores() -> None:
    scores = {"normal": 0.6, "door_open": 0.3, "weird": 0.1}
    assert action_scores(scores, {"normal": "none", "door_open": "alert"}, ["none", "alert"]) == {"none": 0.6, "alert": 0.3}
    assert action_scores({"x": 0.5, "y": 0.5}, {"x": "alert", "y": "alert"}, ["alert"]) == {"alert": 1.0}


def test_the_gain_of_a_fit_counts_only_beyond_the_noise_of_the_labels() -> None:
    fitted = fit(overconfident(200, 0.7))
    assert fitted is not None
    mean, low = nll_gain(overconfident(60, 0.7, seed=5), fitted.temperature)
    assert mean > 0 and low > 0  # an overconfident model: the temperature clearly helps on new labels
    # a model already calibrated (says 0.7, right 70 % of the time): a temperature fitted on a
    # few labels gains nothing it can show on others
    rng = random.Random(3)
    calibrated = [Labelled({"a": 0.7, "b": 0.2, "c": 0.1}, "a" if rng.random() < 0.7 else rng.choice(["b", "c"])) for _ in range(300)]
    small = fit(calibrated[:20])
    assert small is not None
    _, low = nll_gain(calibrated[20:38], small.temperature)
    assert low <= 0
