"""Signed MQTT envelopes (DESIGN section 6) and topic names."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agentd import hlc
from agentd.errors import TrustError
from agentd.pipeline import new_id
from agentd.signing import NodeKey, canonical, verify


def topic(fleet: str, *parts: str) -> str:
    return "/".join(("agentd", "v1", fleet, *parts))


def envelope(kind: str, *, node: str, hlc: str, body: dict[str, Any], key: NodeKey, ident: str | None = None) -> bytes:
    """``{"v":1,"kind","id","node","hlc","body","sig"}`` with an Ed25519 ``sig`` over the
    canonical JSON of the rest; returned as canonical JSON bytes."""
    return envelope_raw(kind, node=node, hlc=hlc, body_canonical=canonical(body), key=key, ident=ident)


def envelope_raw(kind: str, *, node: str, hlc: str, body_canonical: bytes, key: NodeKey, ident: str | None = None) -> bytes:
    """As ``envelope``, for a body already in canonical form (the decision path has it).

    The members are spliced in canonical (sorted) order around the body's bytes:
    body, hlc, id, kind, node, [sig,] v. The scalar members are plain strings, which the
    stdlib encoder writes exactly as RFC 8785 does.
    """
    head = b'{"body":' + body_canonical + b',"hlc":' + _s(hlc) + b',"id":' + _s(ident or new_id())
    head += b',"kind":' + _s(kind) + b',"node":' + _s(node)
    sig = key.sign(head + b',"v":1}')
    return head + b',"sig":' + _s(sig) + b',"v":1}'


class Rejected(Exception):
    """A received envelope was dropped; ``reason`` is a short code for counting."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def check_envelope(
    payload: bytes,
    *,
    max_bytes: int,
    key_for: Callable[[str, dict[str, Any]], str | None],
    now_ms: int,
    max_skew_ms: int,
) -> dict[str, Any]:
    """Parse and verify a received envelope; ``Rejected`` with the reason otherwise.

    ``key_for(node, envelope)`` returns the sender's trusted public key, or None.
    """
    if len(payload) > max_bytes:
        raise Rejected("oversized", f"{len(payload)} bytes > {max_bytes}")
    try:
        env = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected("malformed", f"not JSON: {exc}") from exc
    if not isinstance(env, dict) or env.get("v") != 1:
        raise Rejected("malformed", "not a v1 envelope")
    for field, kind in (("kind", str), ("id", str), ("node", str), ("hlc", str), ("body", dict)):
        if not isinstance(env.get(field), kind):
            raise Rejected("malformed", f"missing or wrong {field!r}")
    sig = env.get("sig")
    if not isinstance(sig, str):
        raise Rejected("unsigned", f"from {env['node'][:64]!r}")
    try:
        wall, _ = hlc.decode(env["hlc"])
    except ValueError as exc:
        raise Rejected("malformed", str(exc)) from exc
    if wall - now_ms > max_skew_ms:
        raise Rejected("clock_skew", f"HLC {wall - now_ms} ms ahead of local time")
    key = key_for(env["node"], env)
    if key is None:
        raise Rejected("unknown_signer", f"no trusted key for node {env['node'][:64]!r}")
    unsigned = {k: v for k, v in env.items() if k != "sig"}
    try:
        material = canonical(unsigned)
    except TrustError as exc:
        raise Rejected("malformed", str(exc)) from exc
    if not verify(key, material, sig):
        raise Rejected("bad_signature", f"from {env['node'][:64]!r}")
    return env


def _s(value: str) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()
