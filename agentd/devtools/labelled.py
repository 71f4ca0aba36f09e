"""Labelled events for the example skills, for the accuracy part of ``agentd bench``.

Generated from a fixed seed, so every run scores the same set. Freezer readings come
from the simulator's four conditions; staff requests from phrase templates, some with
the keywords the rules look for and some without (the cases a language model is for).
None of the requests is one of the prompt's few-shot examples.
"""

from __future__ import annotations

import random
from typing import Any

from agentd.daemon.sources import freezer_reading

FREEZER_ACTION = {"normal": "none", "door_open": "alert", "icing": "defrost", "failure": "shutdown"}

_PLACES = ("bay 1", "bay 2", "bay 4", "freezer 3", "the blast chiller", "dock 2", "aisle 7", "the walk-in")
_ITEMS = ("ice packs", "pallet wrap", "labels", "gloves", "dry ice", "shrink film", "cleaning spray", "thermometer probes")
_EQUIP = ("door seal", "compressor", "evaporator fan", "forklift", "door closer", "temperature display", "strip curtain", "drain heater")

REQUESTS: dict[str, tuple[str, ...]] = {
    "restock": (
        "We are out of {item} in {place}",
        "Can someone bring more {item} to {place}?",
        "{place} needs more {item}",
        "Running low on {item}",
        "No {item} left at {place}, please reorder",
        "Please send a box of {item} to {place}",
        "We used the last of the {item}",
        "Order {item} for tomorrow's shift",
    ),
    "maintenance": (
        "The {equip} in {place} is broken",
        "The {equip} at {place} makes a grinding noise",
        "{equip} in {place} is not working",
        "The {equip} keeps failing at {place}",
        "Water is leaking under the {equip} in {place}",
        "The {equip} at {place} needs a repair",
        "The {equip} of {place} rattles and shakes",
        "Please fix the {equip} in {place}",
    ),
    "escalate": (
        "There is smoke near the {equip} in {place}",
        "Someone slipped and is injured at {place}",
        "I smell gas next to {place}",
        "Fire alarm going off in {place}",
        "A worker is trapped inside {place}",
        "Sparks are flying from the {equip} in {place}",
        "The floor of {place} is flooding fast",
        "Someone collapsed in {place}, call for help",
    ),
    "ignore": (
        "Thanks, {place} is all sorted",
        "Delivery for {place} is put away",
        "Shift handover done at {place}",
        "Good morning from {place}",
        "Checked {place}, everything looks fine",
        "Lunch break now, back in 30 minutes",
        "The {item} arrived, thank you",
        "Just confirming {place} was cleaned",
    ),
}


def operator_requests(n: int = 240, seed: int = 7) -> list[tuple[dict[str, Any], str]]:
    """``n`` staff requests with the action a person would choose, balanced over the actions."""
    rng = random.Random(seed)
    actions = sorted(REQUESTS)
    out = []
    for i in range(n):
        action = actions[i % len(actions)]
        template = rng.choice(REQUESTS[action])
        text = template.format(item=rng.choice(_ITEMS), place=rng.choice(_PLACES), equip=rng.choice(_EQUIP))
        out.append(({"text": text[0].upper() + text[1:]}, action))
    rng.shuffle(out)
    return out


def freezer_events(n: int = 400, seed: int = 11) -> list[tuple[dict[str, Any], str]]:
    """``n`` freezer readings with the action their condition calls for."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind, event = freezer_reading(rng)
        out.append((event, FREEZER_ACTION[kind]))
    return out
