"""A built-in event source: plausible telemetry at a configured rate, so one node shows its work alone."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentd.config.schema import SkillConfig

# What staff write on a reading of each condition (often nothing). Notes follow the condition,
# as a person's would: earlier versions picked one of these at random whatever the reading,
# which taught nothing and made a note-reading stage look wrong where the note was.
NOTES = {
    "normal": ("", "", "", "routine check", "", "all fine", "", ""),
    "door_open": ("", "", "door left ajar by forklift", "", "door found open", "", "", ""),
    "icing": ("", "ice on the evaporator", "", "", "frost on the coil", "", "", ""),
    "failure": ("", "compressor noisy", "", "", "", "compressor not starting", "", ""),
}


def freezer_event(rng: random.Random) -> dict[str, float | str]:
    """A freezer reading from one of four conditions (mostly normal), as in scripts/build_models.py."""
    return freezer_reading(rng)[1]


def freezer_reading(rng: random.Random) -> tuple[str, dict[str, float | str]]:
    """The condition drawn and the reading it produced."""
    kind = rng.choices(("normal", "door_open", "icing", "failure"), weights=(70, 15, 10, 5))[0]
    if kind == "normal":
        t, d, a = rng.gauss(-20, 1.2), max(0.0, rng.gauss(10, 10)), rng.gauss(5, 0.5)
    elif kind == "door_open":
        t, d, a = rng.gauss(-14, 2.5), rng.uniform(120, 600), rng.gauss(6.5, 0.6)
    elif kind == "icing":
        t, d, a = rng.gauss(-15, 2), max(0.0, rng.gauss(5, 5)), rng.uniform(7.5, 10)
    else:
        t, d, a = rng.uniform(-8, 5), max(0.0, rng.gauss(5, 5)), rng.choice((rng.uniform(0, 0.4), rng.uniform(11, 14)))
    return kind, {"temperature_c": round(t, 2), "door_open_s": round(d, 1), "compressor_a": round(max(0.0, a), 2), "note": rng.choice(NOTES[kind])}


def event_for(skill: SkillConfig, rng: random.Random) -> dict[str, Any]:
    """An event for ``skill``: freezer physics where the fields match, else values within each field's range."""
    base: dict[str, Any] = freezer_event(rng) if {"temperature_c", "compressor_a"} <= set(skill.input) else {}
    out: dict[str, Any] = {}
    for name, spec in skill.input.items():
        if name in base:
            value = base[name]
        elif spec.type in ("number", "integer"):
            lo = spec.min if spec.min is not None else 0.0
            hi = spec.max if spec.max is not None else lo + 100.0
            value = rng.uniform(lo, hi)
        elif spec.type == "boolean":
            value = rng.random() < 0.5
        else:
            value = ""
        if spec.type == "integer":
            value = int(value)
        elif spec.type == "number":
            value = float(value)
            if spec.min is not None:
                value = max(spec.min, value)
            if spec.max is not None:
                value = min(spec.max, value)
        elif spec.type == "string":
            value = str(value)[: spec.max_length]
        out[name] = value
    return out
