"""Event validation against a skill's input schema (DESIGN section 3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentd.errors import InputError
from agentd.trust.untrusted import check_value

if TYPE_CHECKING:
    from agentd.config.schema import FieldSpec, SkillConfig


def validate_event(skill: SkillConfig, data: Any) -> dict[str, Any]:
    """The event's fields, type-checked and range-checked against the skill's input schema.

    Numbers become floats (integers ints), missing optional fields take their default,
    unknown fields are refused so that a typo never silently reaches a rule.
    """
    if not isinstance(data, dict):
        raise InputError(f"{skill.name}: event data must be a JSON object, not {type(data).__name__}")
    unknown = set(data) - set(skill.input)
    if unknown:
        names = ", ".join(sorted(repr(str(k))[:40] for k in unknown)[:5])
        raise InputError(f"{skill.name}: unknown field(s) {names} (known: {', '.join(skill.input)})")
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name, spec in skill.input.items():
        try:
            out[name] = _field(skill.name, name, spec, data)
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        raise InputError("; ".join(problems))
    return out


def _field(skill_name: str, name: str, spec: FieldSpec, data: dict[str, Any]) -> Any:
    """One field, checked and normalised; InputError naming it otherwise."""
    if name not in data or data[name] is None:
        if spec.required and spec.default is None:
            raise InputError(f"{skill_name}: missing required field {name!r} ({spec.type})")
        if spec.default is not None:
            return spec.default
        return "" if spec.type == "string" else (False if spec.type == "boolean" else 0)
    value = data[name]
    if spec.type in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{skill_name}.{name}: expected a number, got {type(value).__name__}")
        check_value(value, what=f"{skill_name}.{name}")  # finite, and within what canonical JSON carries exactly
        if spec.type == "integer":
            if isinstance(value, float) and not value.is_integer():
                raise InputError(f"{skill_name}.{name}: expected an integer, got {value}")
            value = int(value)
        else:
            value = float(value)
        if spec.min is not None and value < spec.min:
            raise InputError(f"{skill_name}.{name}: {value} is below the minimum {spec.min}")
        if spec.max is not None and value > spec.max:
            raise InputError(f"{skill_name}.{name}: {value} is above the maximum {spec.max}")
    elif spec.type == "string":
        if not isinstance(value, str):
            raise InputError(f"{skill_name}.{name}: expected a string, got {type(value).__name__}")
        if len(value) > spec.max_length:
            raise InputError(f"{skill_name}.{name}: {len(value)} characters, over the limit of {spec.max_length}")
        check_value(value, what=f"{skill_name}.{name}")  # no lone surrogates: the record must be signable
    elif not isinstance(value, bool):
        raise InputError(f"{skill_name}.{name}: expected true or false, got {type(value).__name__}")
    return value
