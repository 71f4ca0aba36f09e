"""MQTT topic names under ``agentd/v1/<fleet>/`` (DESIGN section 6)."""

from __future__ import annotations


def topic(fleet: str, *parts: str) -> str:
    return "/".join(("agentd", "v1", fleet, *parts))
