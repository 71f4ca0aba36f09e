"""Rules and guards as CEL expressions, compiled once at load.

Expressions see the event's fields by name, ``action`` (the chosen action, for guards),
``skill`` and ``node``, and three functions over the local fleet-state view:

- ``fleet_count(action, window_s)``: decisions with that action by any node of the fleet
  in the last ``window_s`` seconds;
- ``fleet_value(key)``: a value of the replicated fleet-state map, or ``null`` (never set,
  unset, or expired);
- ``fleet_keys(prefix)``: the keys of that map holding a value now that start with
  ``prefix``, sorted (e.g. ``size(fleet_keys("nodes/").filter(k, k.endsWith("/defrosting")))``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentd.errors import AgentdError, RuleError

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig
    from agentd.config.schema import SkillConfig
from agentd.decision.fleet import FleetView

FUNCTIONS = ("fleet_count", "fleet_value", "fleet_keys")


# CEL's core functions and macros, plus ours; anything else is a typo.
CEL_FUNCTIONS = frozenset({
    *FUNCTIONS, "size", "contains", "startsWith", "endsWith", "matches", "int", "uint", "double", "string",
    "bytes", "type", "dyn", "duration", "timestamp", "has", "all", "exists", "exists_one", "map", "filter",
    "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getFullYear", "getHours", "getMilliseconds",
    "getMinutes", "getMonth", "getSeconds",
})


@functools.cache
def cel_module() -> Any:
    """The CEL extension module, loaded once.

    The ``cel`` package's ``__init__`` also imports its interactive shell (typer,
    prompt_toolkit, rich): about 25 MB of RSS on a Pi for nothing. So load the compiled
    extension directly, and fall back to the package where that fails.
    """
    import importlib.machinery
    import importlib.util
    from pathlib import Path

    try:
        spec = importlib.util.find_spec("cel")
        assert spec is not None and spec.origin is not None
        so = next(Path(spec.origin).parent.glob("cel.*.so"))
        loader = importlib.machinery.ExtensionFileLoader("cel.cel", str(so))
        module_spec = importlib.util.spec_from_file_location("cel.cel", so, loader=loader)
        assert module_spec is not None
        module = importlib.util.module_from_spec(module_spec)
        loader.exec_module(module)
        return module
    except (AssertionError, StopIteration, ImportError, OSError):
        import cel

        return cel


BUILTIN_VARS = ("action", "skill", "node")


@dataclass(frozen=True)
class Compiled:
    name: str
    source: str
    program: Any
    action: str
    default: bool = False


@dataclass(frozen=True)
class SkillRules:
    """A skill's compiled rules (in order, default last) and guards."""

    rules: tuple[Compiled, ...]
    guards: tuple[Compiled, ...]


def compile_skill(skill: SkillConfig, *, index: int = 0, where: Callable[..., str] | None = None) -> SkillRules:
    """Compile every rule and guard; RuleError naming file:line, key and the unknown names."""
    cel = cel_module()
    known = set(skill.input) | set(BUILTIN_VARS)

    def one(kind: str, i: int, name: str, expr: str, action: str, default: bool = False) -> Compiled:
        loc = where(kind, i, "when") if where else f"{kind}[{i}]"
        try:
            program = cel.compile(expr)
        except ValueError as exc:
            raise RuleError(f"{loc} skills[{index}].{kind}[{i}].when ({skill.name}/{name}): {_first_line(exc)}") from exc
        unknown = set(program.variables()) - known - _bound_names(expr)
        if unknown:
            raise RuleError(
                f"{loc} skills[{index}].{kind}[{i}].when ({skill.name}/{name}): unknown field {', '.join(sorted(map(repr, unknown)))}"
                f" (known: {', '.join(sorted(known))})"
            )
        # operators come back as overload ids like "_>_", "!_", "@in"; only named functions can be typos
        named = {f for f in program.functions() if f.isidentifier()}
        unknown_fns = named - CEL_FUNCTIONS
        if unknown_fns:
            raise RuleError(
                f"{loc} skills[{index}].{kind}[{i}].when ({skill.name}/{name}): unknown function {', '.join(sorted(map(repr, unknown_fns)))}"
                f" (agentd adds: {', '.join(FUNCTIONS)})"
            )
        return Compiled(name=name, source=expr, program=program, action=action, default=default)

    rules = tuple(one("rules", i, r.name, r.when, r.action, r.default) for i, r in enumerate(skill.rules))
    guards = tuple(one("guards", i, g.name, g.when, g.action) for i, g in enumerate(skill.guards))
    return SkillRules(rules=rules, guards=guards)


def compile_all(loaded: LoadedConfig) -> dict[str, SkillRules]:
    """Compile every skill's rules and guards, with errors located in the config file."""
    skills = loaded.config.skills
    return {
        s.name: compile_skill(s, index=i, where=lambda *loc, i=i: loaded.where("skills", i, *loc))
        for i, s in enumerate(skills)
    }


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split("\n")[:2])


def _bound_names(expr: str) -> set[str]:
    """Names bound by comprehension macros (``x`` in ``list.exists(x, ...)``)."""
    import re

    return set(re.findall(r"\.(?:all|exists|exists_one|map|filter)\(\s*([A-Za-z_]\w*)\s*,", expr))


def make_context(variables: dict[str, Any], fleet: FleetView) -> Any:
    return cel_module().Context(variables=variables, functions=fleet.functions())


def evaluate(c: Compiled, context: Any) -> bool:
    """Evaluate one compiled expression to a boolean; RuleError if it errs or is not boolean."""
    try:
        result = c.program.execute(context)
    except (RuntimeError, TypeError, ValueError, ArithmeticError) as exc:
        raise RuleError(f"rule {c.name!r} failed: {_first_line(exc)}") from exc
    if not isinstance(result, bool):
        raise RuleError(f"rule {c.name!r} returned {type(result).__name__}, not a boolean")
    return result


def first_match(rules: Iterable[Compiled], context: Any) -> tuple[Compiled, list[str]]:
    """The first rule whose ``when`` holds (the default always does). Rules that err are skipped
    and named in the second element, so a broken rule never stops a decision."""
    errors: list[str] = []
    last: Compiled | None = None
    for rule in rules:
        last = rule
        if rule.default:
            return rule, errors
        try:
            if evaluate(rule, context):
                return rule, errors
        except RuleError as exc:
            errors.append(str(exc))
    assert last is not None, "a skill always has a default rule"
    return last, errors


def guarded(guards: Iterable[Compiled], context: Any, action: str, errors: list[str]) -> tuple[str, str | None]:
    """``action`` after the guards (each sees ``action`` and may replace it), and the last guard that did.

    A guard that errs is skipped and named in ``errors``."""
    name = None
    shown: str | None = None  # the action the context holds (set only when it changes: each set costs a conversion)
    for g in guards:
        if action != shown:
            context.add_variable("action", action)
            shown = action
        try:
            if evaluate(g, context) and g.action != action:
                action, name = g.action, g.name
        except AgentdError as exc:
            errors.append(str(exc))
    return action, name
