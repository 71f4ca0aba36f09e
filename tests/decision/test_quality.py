"""The eval metrics (agentd.decision.quality) against values computed by hand."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentd.decision import quality


def test_coverage_and_accuracy() -> None:
    # (covered, correct): 3 covered, 2 of them right; the uncovered "correct" one does not count
    c = quality.coverage([(True, True), (True, False), (True, True), (False, True), (False, False)])
    assert (c.total, c.covered, c.correct) == (5, 3, 2)
    assert c.coverage == pytest.approx(0.6)
    assert c.accuracy == pytest.approx(2 / 3)
    empty = quality.coverage([])
    assert empty.coverage is None and empty.accuracy is None
    none_covered = quality.coverage([(False, False)])
    assert none_covered.coverage == 0.0 and none_covered.accuracy is None


def test_confusion_lists_every_action_in_order() -> None:
    m = quality.confusion([("none", "none"), ("alert", "none"), ("alert", "alert"), ("none", "none")], ["none", "alert", "defrost"])
    assert list(m) == ["none", "alert", "defrost"]
    assert m["none"] == {"none": 2, "alert": 0, "defrost": 0}
    assert m["alert"] == {"none": 1, "alert": 1, "defrost": 0}
    assert m["defrost"] == {"none": 0, "alert": 0, "defrost": 0}
    odd = quality.confusion([("a", "zzz")], ["a"])
    assert list(odd) == ["a", "zzz"] and odd["a"] == {"a": 0, "zzz": 1}


def test_ece_by_hand() -> None:
    # bin 9: three at 0.95, two right (acc 2/3); bin 1: one at 0.15, wrong.
    # ECE = 3/4 * |2/3 - 0.95| + 1/4 * |0 - 0.15| = 0.2125 + 0.0375 = 0.25; MCE = 0.95 - 2/3
    cal = quality.calibration([(0.95, True), (0.95, True), (0.95, False), (0.15, False)])
    assert cal is not None
    assert cal.n == 4
    assert cal.ece == pytest.approx(0.25)
    assert cal.mce == pytest.approx(0.95 - 2 / 3)
    assert len(cal.bins) == 10
    assert [b.count for b in cal.bins] == [0, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    assert cal.bins[9].confidence == pytest.approx(0.95) and cal.bins[9].accuracy == pytest.approx(2 / 3)
    assert cal.bins[0].confidence is None and cal.bins[0].accuracy is None
    assert (cal.bins[3].lo, cal.bins[3].hi) == (0.3, 0.4)


def test_ece_bin_edges() -> None:
    # 1.0 falls in the last bin, 0.0 in the first, 0.5 starts bin 5
    cal = quality.calibration([(1.0, True), (0.0, False), (0.5, True)])
    assert cal is not None
    assert [b.count for b in cal.bins] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    # perfectly calibrated at the extremes, 0.5 gap in bin 5: ECE = 1/3 * 0.5
    assert cal.ece == pytest.approx(0.5 / 3)
    assert quality.calibration([]) is None
    with pytest.raises(ValueError, match="outside"):
        quality.calibration([(1.2, True)])
    with pytest.raises(ValueError, match="outside"):
        quality.calibration([(float("nan"), True)])


def test_risk_coverage_by_hand() -> None:
    scored = [(0.6, True), (0.9, True), (0.7, True), (0.8, False)]  # order of input does not matter
    assert quality.risk_curve(scored) == pytest.approx([0.0, 1 / 2, 1 / 3, 1 / 4])
    rc = quality.risk_coverage(scored)
    assert rc is not None
    assert rc.n == 4
    assert rc.aurc == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # coverage c -> k = ceil(c * 4): 10% and 20% -> 1, 30-50% -> 2, 60-70% -> 3, 80-100% -> 4
    assert [p.k for p in rc.points] == [1, 1, 2, 2, 2, 3, 3, 4, 4, 4]
    assert [p.coverage for p in rc.points] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert [p.threshold for p in rc.points] == [0.9, 0.9, 0.8, 0.8, 0.8, 0.7, 0.7, 0.6, 0.6, 0.6]
    assert rc.points[2].risk == pytest.approx(0.5)
    assert rc.points[-1].risk == pytest.approx(0.25)
    assert quality.risk_coverage([]) is None


def test_risk_coverage_spreads_ties() -> None:
    # two items at 0.9, one wrong: the first item alone carries half an error, whatever the order
    for scored in ([(0.9, True), (0.9, False)], [(0.9, False), (0.9, True)]):
        assert quality.risk_curve(scored) == pytest.approx([0.5, 0.5])
        rc = quality.risk_coverage(scored)
        assert rc is not None and rc.aurc == pytest.approx(0.5)
    # a tie group after a sure one: 1.0 right, then 0.5 x3 with one wrong
    assert quality.risk_curve([(1.0, True), (0.5, True), (0.5, False), (0.5, True)]) == pytest.approx(
        [0.0, (1 / 3) / 2, (2 / 3) / 3, 1 / 4])


@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=60))
def test_risk_coverage_properties(scored: list[tuple[float, bool]]) -> None:
    risks = quality.risk_curve(scored)
    errors = sum(not c for _, c in scored)
    assert risks[-1] == pytest.approx(errors / len(scored))  # full coverage: the overall error rate
    assert all(0 <= r <= 1 + 1e-12 for r in risks)
    shuffled = scored[:]
    random.Random(1).shuffle(shuffled)
    assert quality.risk_curve(shuffled) == pytest.approx(risks)
    rc = quality.risk_coverage(scored)
    assert rc is not None and rc.points[-1].k == len(scored)
    cal = quality.calibration(scored)
    assert cal is not None and 0 <= cal.ece <= 1 and sum(b.count for b in cal.bins) == len(scored)


def test_as_dict_shapes_are_rounded_json() -> None:
    cal = quality.calibration([(0.95, True), (0.15, False)])
    rc = quality.risk_coverage([(0.95, True), (0.15, False)], steps=2)
    assert cal is not None and rc is not None
    d = cal.as_dict()
    assert set(d) == {"n", "ece", "mce", "bins"} and set(d["bins"][0]) == {"lo", "hi", "count", "confidence", "accuracy"}
    r = rc.as_dict()
    assert set(r) == {"n", "aurc", "points"} and [p["coverage"] for p in r["points"]] == [0.5, 1.0]
    assert set(r["points"][0]) == {"coverage", "k", "risk", "threshold"}
