"""Signed MQTT envelopes (DESIGN section 6) and topic names."""

from __future__ import annotations

from typing import Any

from agentd.pipeline import new_id
from agentd.signing import NodeKey, canonical


def topic(fleet: str, *parts: str) -> str:
    return "/".join(("agentd", "v1", fleet, *parts))


def envelope(kind: str, *, node: str, hlc: str, body: dict[str, Any], key: NodeKey, ident: str | None = None) -> bytes:
    """``{"v":1,"kind","id","node","hlc","body","sig"}`` with an Ed25519 ``sig`` over the
    canonical JSON of the rest; returned as canonical JSON bytes."""
    env: dict[str, Any] = {"v": 1, "kind": kind, "id": ident or new_id(), "node": node, "hlc": hlc, "body": body}
    env["sig"] = key.sign(canonical(env))
    return canonical(env)
