"""agentd.pipeline: event validation, the confidence gate, the circuit breaker, approval policy."""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentd.config.loader import parse_config
from agentd.config.schema import SkillConfig, StageConfig
from agentd.decision.policy import CircuitBreaker, StageTrace, gate, interim_action, needs_approval
from agentd.decision.validate import validate_event
from agentd.errors import InputError
from agentd.ids import check_event_id
from agentd.stages.base import StageAnswer

SKILL_YAML = """\
skills:
  - name: s
    input:
      temperature_c: {type: number, min: -60, max: 60}
      count: {type: integer, min: 0, max: 10}
      note: {type: string, required: false, max_length: 5}
      door: {type: boolean, required: false}
      level: {type: number, required: false, default: 2.5}
    actions: [none, alert, shutdown]
    rules:
      - {name: d, default: true, action: none}
    approval: {actions: [shutdown], interim: alert}
"""


@pytest.fixture(scope="module")
def skill() -> SkillConfig:
    return parse_config(SKILL_YAML).config.skills[0]


def ok(**kw: Any) -> dict[str, Any]:
    return {"temperature_c": -20, "count": 3, **kw}


# -- validate_event ----------------------------------------------------------


def test_valid_event_is_normalised(skill: SkillConfig) -> None:
    out = validate_event(skill, ok(note="hi", door=True))
    assert out == {"temperature_c": -20.0, "count": 3, "note": "hi", "door": True, "level": 2.5}
    assert isinstance(out["temperature_c"], float)
    assert isinstance(out["count"], int)


def test_missing_optional_fields_take_defaults(skill: SkillConfig) -> None:
    out = validate_event(skill, ok())
    assert out["note"] == "" and out["door"] is False and out["level"] == 2.5
    assert validate_event(skill, ok(note=None))["note"] == ""


def test_integral_float_accepted_for_integer(skill: SkillConfig) -> None:
    assert validate_event(skill, ok(count=4.0))["count"] == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "event data must be a JSON object, not list"),
        ("x", "event data must be a JSON object, not str"),
        ({"count": 1}, "missing required field 'temperature_c' (number)"),
        (ok(temperature_c=None), "missing required field 'temperature_c'"),
        (ok(temp_c=1), "unknown field(s) 'temp_c' (known: temperature_c, count, note, door, level)"),
        (ok(temperature_c="cold"), "s.temperature_c: expected a number, got str"),
        (ok(temperature_c=True), "s.temperature_c: expected a number, got bool"),
        (ok(count=False), "s.count: expected a number, got bool"),
        (ok(temperature_c=float("nan")), "is not a finite number"),
        (ok(temperature_c=float("inf")), "is not a finite number"),
        (ok(temperature_c=-61), "-61.0 is below the minimum -60.0"),
        (ok(temperature_c=60.5), "60.5 is above the maximum 60.0"),
        (ok(count=1.5), "s.count: expected an integer, got 1.5"),
        (ok(count=11), "11 is above the maximum 10.0"),
        (ok(note="toolong"), "s.note: 7 characters, over the limit of 5"),
        (ok(note=5), "s.note: expected a string, got int"),
        (ok(door="yes"), "s.door: expected true or false, got str"),
        (ok(door=1), "s.door: expected true or false, got int"),
        (ok(temperature_c=[1]), "expected a number, got list"),
    ],
)
def test_bad_events_refused_with_a_specific_message(skill: SkillConfig, data: Any, message: str) -> None:
    with pytest.raises(InputError) as err:
        validate_event(skill, data)
    assert message in str(err.value)


def test_unknown_field_names_are_truncated(skill: SkillConfig) -> None:
    with pytest.raises(InputError) as err:
        validate_event(skill, ok(**{"x" * 1000: 1}))
    assert len(str(err.value)) < 200


# Regression: float() of a huge JSON integer used to raise OverflowError instead of InputError.
def test_huge_integer_is_an_input_error(skill: SkillConfig) -> None:
    with pytest.raises(InputError):
        validate_event(skill, ok(temperature_c=10**400))
    # Regression: an integer JSON cannot carry exactly used to pass and then fail the signature.
    with pytest.raises(InputError, match="2\\^53"):
        validate_event(skill, ok(temperature_c=2**53 + 1))


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**300), max_value=10**300)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
_field_values = st.one_of(
    _json,
    st.floats(min_value=-100, max_value=100),
    st.integers(min_value=-100, max_value=100),
    st.text(max_size=8),
    st.booleans(),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        _json,
        st.fixed_dictionaries(
            {},
            optional={
                "temperature_c": _field_values,
                "count": _field_values,
                "note": _field_values,
                "door": _field_values,
                "level": _field_values,
                "other": _field_values,
            },
        ),
    )
)
def test_validate_event_raises_input_error_or_returns_the_schema(data: Any) -> None:
    skill = parse_config(SKILL_YAML).config.skills[0]
    try:
        out = validate_event(skill, data)
    except InputError:
        return
    assert set(out) == set(skill.input)
    for name, spec in skill.input.items():
        value = out[name]
        if spec.type == "number":
            assert isinstance(value, float) and math.isfinite(value)
            assert spec.min is None or value >= spec.min
            assert spec.max is None or value <= spec.max
        elif spec.type == "integer":
            assert isinstance(value, int) and not isinstance(value, bool)
        elif spec.type == "string":
            assert isinstance(value, str) and len(value) <= spec.max_length
        else:
            assert isinstance(value, bool)


# -- event ids ---------------------------------------------------------------


@pytest.mark.parametrize("good", ["a", "evt-1", "sensor/7:2025-01-01T00:00:00.123@gw", "0" * 128])
def test_good_event_ids(good: str) -> None:
    assert check_event_id(good) == good


@pytest.mark.parametrize("bad", ["", "-x", "a b", "a" * 129, "é", "x\ny", 12, None, ["a"]])
def test_bad_event_ids(bad: Any) -> None:
    with pytest.raises(InputError, match=r"event id .* is invalid"):
        check_event_id(bad)


# Regression: EVENT_ID_RE ended in '$' under re.match, so 'x' and 'x\n' were two different ids.
def test_event_id_with_trailing_newline_refused() -> None:
    with pytest.raises(InputError):
        check_event_id("evt-1\n")


# -- gate ----------------------------------------------------------------------


ACTIONS = ["none", "alert", "shutdown"]


def stage(min_confidence: float = 0.8, **mapping: str) -> StageConfig:
    return StageConfig(model="m", min_confidence=min_confidence, map=mapping)


def test_gate_maps_and_accepts() -> None:
    assert gate(StageAnswer("warn", 0.9), stage(warn="alert"), ACTIONS) == ("alert", "accepted")


def test_gate_accepts_an_unmapped_label_that_is_an_action() -> None:
    assert gate(StageAnswer("shutdown", 0.9), stage(warn="alert"), ACTIONS) == ("shutdown", "accepted")


def test_gate_accepts_at_exactly_min_confidence() -> None:
    assert gate(StageAnswer("none", 0.8), stage(), ACTIONS) == ("none", "accepted")


def test_gate_low_confidence() -> None:
    assert gate(StageAnswer("none", 0.79), stage(), ACTIONS) == (None, "low_confidence")


def test_gate_nan_confidence_is_low() -> None:
    assert gate(StageAnswer("none", float("nan")), stage(), ACTIONS) == (None, "low_confidence")


def test_gate_invalid_output_wins_over_confidence() -> None:
    assert gate(StageAnswer("explode", 1.0), stage(), ACTIONS) == (None, "invalid_output")
    assert gate(StageAnswer("explode", 0.1), stage(), ACTIONS) == (None, "invalid_output")


# -- circuit breaker -----------------------------------------------------------


def test_breaker_opens_after_n_consecutive_failures() -> None:
    b = CircuitBreaker(failures=3, cooldown_s=10)
    assert b.state == "closed" and b.allow(0)
    b.failure(1)
    b.failure(2)
    assert b.state == "closed" and b.allow(2)
    b.failure(3)
    assert b.state == "open"
    assert not b.allow(4) and not b.allow(12.9)


def test_breaker_success_resets_the_count() -> None:
    b = CircuitBreaker(failures=2, cooldown_s=10)
    b.failure(1)
    b.success()
    b.failure(2)
    assert b.state == "closed"


def test_breaker_half_open_probe_success_closes() -> None:
    b = CircuitBreaker(failures=1, cooldown_s=10)
    b.failure(0)
    assert not b.allow(9.9)
    assert b.allow(10)  # the one probe
    assert b.state == "half_open"
    assert not b.allow(10.1)  # no second call while the probe runs
    b.success()
    assert b.state == "closed" and b.allow(10.2)


def test_breaker_half_open_probe_failure_reopens_for_a_new_cooldown() -> None:
    b = CircuitBreaker(failures=3, cooldown_s=10)
    for t in (0, 1, 2):
        b.failure(t)
    assert b.allow(12)
    b.failure(12.5)  # one failed probe is enough, whatever the threshold
    assert b.state == "open"
    assert not b.allow(20)
    assert b.allow(22.5)


# -- approvals -------------------------------------------------------------------


def test_needs_approval(skill: SkillConfig) -> None:
    assert needs_approval(skill, "auto", "shutdown")
    assert not needs_approval(skill, "auto", "alert")
    assert not needs_approval(skill, "observe", "none")
    assert needs_approval(skill, "manual", "none")
    assert needs_approval(skill, "manual", "alert")


def test_interim_action_is_the_configured_one_else_the_default_rule(skill: SkillConfig) -> None:
    assert interim_action(skill) == "alert"
    data = yaml.safe_load(SKILL_YAML)
    del data["skills"][0]["approval"]
    other = parse_config(yaml.safe_dump(data)).config.skills[0]
    assert interim_action(other) == "none"
    assert not needs_approval(other, "auto", "shutdown")


def test_stage_trace_as_dict_rounds_and_omits_empty_scores() -> None:
    t = StageTrace(model="m", answer="a", confidence=0.123456789, latency_ms=1.5, outcome="accepted")
    d = t.as_dict()
    assert set(d) == {"model", "answer", "confidence", "latency_ms", "outcome"}
    assert d["confidence"] != 0.123456789 and d["confidence"] == pytest.approx(0.123456789, abs=1e-3)
    t.scores = {"a": 0.5}
    assert t.as_dict()["scores"] == {"a": 0.5}
