"""Signed MQTT envelopes (DESIGN section 6) and topic names."""

from __future__ import annotations

import json
from typing import Any

from agentd.pipeline import new_id
from agentd.signing import NodeKey, canonical


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


def _s(value: str) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()
