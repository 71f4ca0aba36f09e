"""Signed MQTT envelopes, version 2 (DESIGN section 6)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agentd.errors import Rejected, TrustError
from agentd.ids import new_id
from agentd.trust import hlc
from agentd.trust.canonical import canonical
from agentd.trust.keys import NodeKey, verify
from agentd.trust.untrusted import parse_json

__all__ = ["Rejected", "check_envelope", "envelope", "envelope_raw"]


VERSION = 2


ENVELOPE_MEMBERS = frozenset({"v", "fleet", "kind", "id", "node", "hlc", "body", "sig"})


MAX_KIND_CHARS = 32


MAX_ID_CHARS = 128


def envelope(kind: str, *, fleet: str, node: str, hlc: str, body: dict[str, Any], key: NodeKey, ident: str | None = None) -> bytes:
    """``{"v":2,"fleet","kind","id","node","hlc","body","sig"}`` with an Ed25519 ``sig`` over the
    canonical JSON of the rest; returned as canonical JSON bytes. The fleet is signed, so an
    envelope replayed on another fleet's topics is refused there."""
    return envelope_raw(kind, fleet=fleet, node=node, hlc=hlc, body_canonical=canonical(body), key=key, ident=ident)


def envelope_raw(
    kind: str, *, fleet: str, node: str, hlc: str, body_canonical: bytes, key: NodeKey, ident: str | None = None
) -> bytes:
    """As ``envelope``, for a body already in canonical form (the decision path has it).

    The members are spliced in canonical (sorted) order around the body's bytes:
    body, fleet, hlc, id, kind, node, [sig,] v. The scalar members are plain strings, which the
    stdlib encoder writes exactly as RFC 8785 does.
    """
    head = b'{"body":' + body_canonical + b',"fleet":' + _s(fleet) + b',"hlc":' + _s(hlc) + b',"id":' + _s(ident or new_id())
    head += b',"kind":' + _s(kind) + b',"node":' + _s(node)
    sig = key.sign(head + b',"v":2}')
    return head + b',"sig":' + _s(sig) + b',"v":2}'


def check_envelope(
    payload: bytes,
    *,
    fleet: str,
    max_bytes: int,
    key_for: Callable[[str, dict[str, Any]], str | None],
    now_ms: int,
    max_skew_ms: int,
    accept_v1: bool = False,
) -> dict[str, Any]:
    """Parse and verify a received envelope of ``fleet``; ``Rejected`` with the reason otherwise.

    ``key_for(node, envelope)`` returns the sender's trusted public key, or None. A v1
    envelope (no fleet in its signed bytes) is refused as ``old_version`` unless
    ``accept_v1`` (``mesh.accept_v1``, for a rolling upgrade).
    """
    env = parse_json(payload, max_bytes=max_bytes, what="envelope")
    if not isinstance(env, dict):
        raise Rejected("malformed", "an envelope is a JSON object")
    version = env.get("v")
    if version == 1 and not isinstance(version, bool):
        if not accept_v1:
            raise Rejected("old_version", "a v1 envelope (the fleet is not signed); set mesh.accept_v1 during a rolling upgrade")
    elif version != VERSION or isinstance(version, bool):
        raise Rejected("malformed", f"unknown envelope version {str(version)[:16]!r} (this node speaks {VERSION})")
    unknown = set(env) - ENVELOPE_MEMBERS
    if unknown:
        raise Rejected("malformed", f"unknown envelope member(s) {sorted(unknown)[:3]}")
    for field, kind, limit in (("kind", str, MAX_KIND_CHARS), ("id", str, MAX_ID_CHARS), ("node", str, 64), ("hlc", str, 32), ("body", dict, 0)):
        value = env.get(field)
        if not isinstance(value, kind):
            raise Rejected("malformed", f"missing or wrong {field!r}")
        if limit and not 0 < len(value) <= limit:
            raise Rejected("malformed", f"{field!r} must be 1-{limit} characters")
    if version == VERSION and env.get("fleet") != fleet:
        raise Rejected("wrong_fleet", f"signed for fleet {str(env.get('fleet'))[:64]!r}, this is {fleet!r}")
    sig = env.get("sig")
    if not isinstance(sig, str) or not sig:
        raise Rejected("unsigned", f"from {env['node']!r}")
    if len(sig) > 128:
        raise Rejected("malformed", "'sig' is too long for an Ed25519 signature")
    try:
        wall, _ = hlc.decode(env["hlc"])
    except ValueError as exc:
        raise Rejected("malformed", str(exc)) from exc
    if wall - now_ms > max_skew_ms:
        raise Rejected("clock_skew", f"HLC {wall - now_ms} ms ahead of local time (at most {max_skew_ms} ms)")
    key = key_for(env["node"], env)
    if key is None:
        raise Rejected("unknown_signer", f"no trusted key for {env['node']!r}")
    unsigned = {k: v for k, v in env.items() if k != "sig"}
    try:
        material = canonical(unsigned)
    except TrustError as exc:
        raise Rejected("malformed", str(exc)) from exc
    if not verify(key, material, sig):
        raise Rejected("bad_signature", f"from {env['node']!r}")
    return env


def _s(value: str) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()
