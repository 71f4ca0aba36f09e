"""agentd.rules: CEL compilation errors, the fleet view, first_match and guards."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from agentd.config.loader import LoadedConfig, parse_config
from agentd.decision.fleet import FleetView
from agentd.decision.rules import SkillRules, compile_all, compile_skill, evaluate, first_match, make_context
from agentd.errors import RuleError


def skill_yaml(rules: list[dict[str, Any]], guards: list[dict[str, Any]] | None = None) -> str:
    return yaml.safe_dump(
        {
            "skills": [
                {
                    "name": "s",
                    "input": {
                        "temperature_c": {"type": "number"},
                        "count": {"type": "integer", "required": False},
                        "note": {"type": "string", "required": False},
                    },
                    "actions": ["none", "alert", "shutdown"],
                    "rules": rules,
                    "guards": guards or [],
                }
            ]
        },
        sort_keys=False,
    )


DEFAULT = {"name": "fallback", "default": True, "action": "none"}


def load(rules: list[dict[str, Any]], guards: list[dict[str, Any]] | None = None) -> LoadedConfig:
    return parse_config(skill_yaml(rules, guards), source="rules.yaml")


def compiled(rules: list[dict[str, Any]], guards: list[dict[str, Any]] | None = None) -> SkillRules:
    return compile_all(load(rules, guards))["s"]


def ctx(fleet: FleetView | None = None, **variables: Any) -> Any:
    base: dict[str, Any] = {"temperature_c": -20.0, "count": 0, "note": "", "skill": "s", "node": "n1", "action": ""}
    return make_context({**base, **variables}, fleet or FleetView())


# -- compilation ---------------------------------------------------------------


def test_unknown_field_names_the_rule_the_field_and_the_known_fields() -> None:
    text = skill_yaml([{"name": "hot", "when": "temp_c > 0.0", "action": "alert"}, DEFAULT])
    with pytest.raises(RuleError) as err:
        compile_all(parse_config(text, source="rules.yaml"))
    msg = str(err.value)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "temp_c" in t)
    assert msg.startswith(f"rules.yaml:{line} skills[0].rules[0].when (s/hot): unknown field 'temp_c'")
    assert "(known: action, count, node, note, skill, temperature_c)" in msg


def test_unknown_field_in_a_guard_is_named_too() -> None:
    with pytest.raises(RuleError, match=r"skills\[0\]\.guards\[0\]\.when \(s/g\): unknown field 'door'"):
        compiled([DEFAULT], [{"name": "g", "when": "door > 1.0", "action": "alert"}])


def test_syntax_error_names_the_rule() -> None:
    with pytest.raises(RuleError, match=r"rules\.yaml:\d+ skills\[0\]\.rules\[0\]\.when \(s/broken\): .*Syntax error"):
        compiled([{"name": "broken", "when": "temperature_c > ", "action": "alert"}, DEFAULT])


def test_compile_skill_without_where_names_the_rule_position() -> None:
    skill = load([DEFAULT]).config.skills[0]
    bad = skill.model_copy(
        update={"rules": [skill.rules[0].model_copy(update={"when": "nope == 1", "default": False}), *skill.rules]}
    )
    with pytest.raises(RuleError, match=r"^rules\[0\] skills\[0\]\.rules\[0\]\.when \(s/fallback\): unknown field 'nope'"):
        compile_skill(bad)


def test_comprehension_variables_are_not_unknown_fields() -> None:
    rules = compiled([{"name": "any_big", "when": "[1, 2, 3].exists(x, x > count)", "action": "alert"}, DEFAULT])
    assert [r.name for r in rules.rules] == ["any_big", "fallback"]


def test_builtins_and_fleet_functions_compile() -> None:
    rules = compiled(
        [
            {
                "name": "r",
                "when": 'skill == "s" && node != "" && fleet_count("shutdown", 600) >= 0 && fleet_value("k") == null',
                "action": "alert",
            },
            DEFAULT,
        ],
        [{"name": "g", "when": 'action == "shutdown"', "action": "alert"}],
    )
    assert rules.rules[-1].default and rules.guards[0].name == "g"


# Regression: a misspelt function used to compile and then fail on every event, silently skipped.
def test_unknown_function_refused_at_compile_time() -> None:
    with pytest.raises(RuleError, match="fleet_cuont"):
        compiled([{"name": "limit", "when": 'fleet_cuont("shutdown", 600) > 2', "action": "alert"}, DEFAULT])


# -- evaluation and first_match --------------------------------------------------


def test_first_match_takes_the_first_rule_that_holds() -> None:
    rules = compiled(
        [
            {"name": "hot", "when": "temperature_c > 0.0", "action": "shutdown"},
            {"name": "warm", "when": "temperature_c > -10.0", "action": "alert"},
            DEFAULT,
        ]
    )
    assert first_match(rules.rules, ctx(temperature_c=5.0))[0].name == "hot"
    assert first_match(rules.rules, ctx(temperature_c=-5.0))[0].name == "warm"
    rule, errors = first_match(rules.rules, ctx(temperature_c=-20.0))
    assert (rule.name, rule.action, errors) == ("fallback", "none", [])


def test_first_match_skips_erroring_rules_and_names_them() -> None:
    rules = compiled(
        [
            {"name": "parse_note", "when": "int(note) > 3", "action": "shutdown"},
            {"name": "not_bool", "when": "temperature_c", "action": "shutdown"},
            {"name": "mixed_types", "when": "note > 1", "action": "shutdown"},
            {"name": "warm", "when": "temperature_c > -10.0", "action": "alert"},
            DEFAULT,
        ]
    )
    rule, errors = first_match(rules.rules, ctx(temperature_c=-5.0, note="abc"))
    assert rule.name == "warm"
    assert len(errors) == 3
    assert "rule 'parse_note' failed" in errors[0]
    assert "rule 'not_bool' returned float, not a boolean" in errors[1]
    assert "rule 'mixed_types' failed" in errors[2]


def test_default_rule_answers_even_when_every_rule_errs() -> None:
    rules = compiled([{"name": "bad", "when": "int(note) > 3", "action": "alert"}, DEFAULT])
    rule, errors = first_match(rules.rules, ctx(note="x"))
    assert rule.default and len(errors) == 1


# Regression: ZeroDivisionError/OverflowError (ArithmeticError) used to escape first_match.
@pytest.mark.parametrize("expr", ["100 / count > 3", "count % 0 == 1", "9223372036854775807 + count > 0"])
def test_arithmetic_errors_are_skipped_like_other_rule_errors(expr: str) -> None:
    rules = compiled([{"name": "ratio", "when": expr, "action": "alert"}, DEFAULT])
    rule, errors = first_match(rules.rules, ctx(count=0 if "/" in expr else 1))
    assert rule.default and errors and "ratio" in errors[0]


def test_evaluate_raises_rule_error_naming_the_rule() -> None:
    rules = compiled([{"name": "bad", "when": "int(note) > 3", "action": "alert"}, DEFAULT])
    with pytest.raises(RuleError, match="rule 'bad' failed"):
        evaluate(rules.rules[0], ctx(note="x"))


# -- guards --------------------------------------------------------------------------


def test_guard_sees_the_chosen_action() -> None:
    rules = compiled(
        [DEFAULT],
        [{"name": "no_shutdown_when_cold", "when": 'action == "shutdown" && temperature_c < -15.0', "action": "alert"}],
    )
    guard = rules.guards[0]
    assert evaluate(guard, ctx(action="shutdown", temperature_c=-20.0))
    assert not evaluate(guard, ctx(action="shutdown", temperature_c=-5.0))
    assert not evaluate(guard, ctx(action="alert", temperature_c=-20.0))


def test_guard_reads_fleet_state() -> None:
    fleet = FleetView()
    rules = compiled(
        [DEFAULT],
        [
            {
                "name": "fleet_shutdown_limit",
                "when": 'action == "shutdown" && fleet_count("shutdown", 600) >= 2',
                "action": "alert",
            },
            {"name": "maintenance", "when": 'fleet_value("maintenance") == true', "action": "none"},
        ],
    )
    limit, maintenance = rules.guards
    assert not evaluate(limit, ctx(fleet, action="shutdown"))
    now = time.time()
    fleet.add_decision("shutdown", now - 30)
    assert not evaluate(limit, ctx(fleet, action="shutdown"))
    fleet.add_decision("shutdown", now - 10)
    assert evaluate(limit, ctx(fleet, action="shutdown"))
    assert not evaluate(maintenance, ctx(fleet))
    fleet.set_value("maintenance", True)
    assert evaluate(maintenance, ctx(fleet))


# -- the fleet view -----------------------------------------------------------------


def test_fleet_count_windows() -> None:
    fleet = FleetView()
    now = 1_000_000.0 + time.time()  # future stamps are never pruned by the 24 h horizon
    for age in (5, 50, 500, 5000):
        fleet.add_decision("shutdown", now - age)
    fleet.add_decision("alert", now - 1)
    assert fleet.count("shutdown", 10, now=now) == 1
    assert fleet.count("shutdown", 60, now=now) == 2
    assert fleet.count("shutdown", 600, now=now) == 3
    assert fleet.count("shutdown", 6000, now=now) == 4
    assert fleet.count("shutdown", 0, now=now) == 0
    assert fleet.count("alert", 10, now=now) == 1
    assert fleet.count("defrost", 10, now=now) == 0


def test_fleet_count_window_edge_is_inclusive() -> None:
    fleet = FleetView()
    now = time.time()
    fleet.add_decision("alert", now - 600)
    assert fleet.count("alert", 600, now=now) == 1
    assert fleet.count("alert", 599.999, now=now) == 0


def test_fleet_view_accepts_decisions_out_of_order() -> None:
    fleet = FleetView()
    now = time.time()
    for age in (10, 300, 20, 1000, 5):  # peers' gossip arrives late and unordered
        fleet.add_decision("shutdown", now - age)
    assert fleet.count("shutdown", 15, now=now) == 2
    assert fleet.count("shutdown", 400, now=now) == 4
    assert fleet.count("shutdown", 2000, now=now) == 5


def test_fleet_view_forgets_decisions_older_than_a_day() -> None:
    fleet = FleetView()
    now = time.time()
    fleet.add_decision("shutdown", now - 2 * 86400)
    fleet.add_decision("shutdown", now - 10)
    assert fleet.count("shutdown", 3 * 86400, now=now) == 1


def test_fleet_functions_through_cel() -> None:
    fleet = FleetView()
    fleet.add_decision("shutdown", time.time() - 1)
    fleet.set_value("site/limit", 3)
    rules = compiled(
        [{"name": "r", "when": 'fleet_count("shutdown", 60) < fleet_value("site/limit")', "action": "alert"}, DEFAULT]
    )
    assert evaluate(rules.rules[0], ctx(fleet))
