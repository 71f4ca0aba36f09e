"""Batches inside envelope v2 (DESIGN section 6, "Batches"): many bodies under one signature.

A batch is an ordinary v2 envelope of kind ``batch`` whose body is ``{"items": [item, ...]}``;
an item is exactly ``{"kind", "id", "hlc", "body"}``. Its signature is the batch's: an item
is read as the envelope ``{"v": 2, "fleet": <batch's>, "kind", "id", "node": <batch's>,
"hlc", "body"}`` that it would have been on its own, and is checked as that envelope would be
(its kind allowed on the topic, its body, its HLC skew, its id not seen before); only the
signature check is shared. Bounds: at most ``MAX_ITEMS`` items, distinct ids, no batch inside
a batch, and the whole envelope within ``mqtt.max_payload_bytes`` like any other. Senders pack
with ``pack``; receivers split with ``unbatch`` (pure functions).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from agentd.errors import Rejected
from agentd.trust import hlc as hlc_mod
from agentd.trust.envelope import MAX_ID_CHARS, MAX_KIND_CHARS, VERSION, envelope_raw

if TYPE_CHECKING:
    from agentd.trust.keys import NodeKey

BATCH = "batch"
MAX_ITEMS = 256
ITEM_MEMBERS = frozenset({"kind", "id", "hlc", "body"})
# What the envelope around the items costs at most: members, a 64-character fleet and node, the signature.
ENVELOPE_OVERHEAD = 400


def item_bytes(kind: str, ident: str, hlc: str, body_canonical: bytes) -> bytes:
    """One item in canonical JSON (members in RFC 8785 order: body, hlc, id, kind)."""
    return b'{"body":' + body_canonical + b',"hlc":' + _s(hlc) + b',"id":' + _s(ident) + b',"kind":' + _s(kind) + b"}"


def pack(items: list[bytes], *, max_bytes: int, max_items: int = MAX_ITEMS) -> tuple[list[list[bytes]], list[bytes]]:
    """Split canonical items, in order, into batches of at most ``max_items`` whose envelope stays
    within ``max_bytes``; an item too large for any batch is returned apart (the second list)."""
    room = max_bytes - ENVELOPE_OVERHEAD - len(b'{"items":[]}')
    batches: list[list[bytes]] = []
    alone: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for item in items:
        if len(item) > room:
            alone.append(item)
            continue
        if current and (len(current) >= max_items or size + 1 + len(item) > room):
            batches.append(current)
            current, size = [], 0
        size += len(item) + (1 if current else 0)
        current.append(item)
    if current:
        batches.append(current)
    return batches, alone


def batch_body(items: list[bytes]) -> bytes:
    """The canonical body of a batch of canonical items."""
    return b'{"items":[' + b",".join(items) + b"]}"


def batch_envelope(items: list[bytes], *, fleet: str, node: str, hlc: str, key: NodeKey) -> bytes:
    """A signed ``batch`` envelope of canonical items (``pack`` sized them)."""
    return envelope_raw(BATCH, fleet=fleet, node=node, hlc=hlc, body_canonical=batch_body(items), key=key)


def unbatch(
    env: dict[str, Any], *, allowed: tuple[str, ...], now_ms: int, max_skew_ms: int, max_items: int = MAX_ITEMS
) -> list[dict[str, Any] | Rejected]:
    """The items of a verified ``batch`` envelope, each as the envelope it stands for, or the
    ``Rejected`` that refuses that item alone. The whole batch is refused (``Rejected`` raised)
    when its body is not ``{"items": [...]}``, it holds no item or more than ``max_items``
    (``oversized``), or two items share an id."""
    body = env["body"]
    items = body.get("items")
    if set(body) != {"items"} or not isinstance(items, list) or not items:
        raise Rejected("malformed", 'a batch body is {"items": [{"kind", "id", "hlc", "body"}, ...]} with at least one item')
    if len(items) > max_items:
        raise Rejected("oversized", f"a batch of {len(items)} items (at most {max_items})")
    ids = [i.get("id") for i in items if isinstance(i, dict)]
    if len(set(map(str, ids))) != len(ids):
        raise Rejected("malformed", "two items of a batch share an id")
    return [_item(env, i, allowed, now_ms, max_skew_ms) for i in items]


def _item(env: dict[str, Any], item: Any, allowed: tuple[str, ...], now_ms: int, max_skew_ms: int) -> dict[str, Any] | Rejected:
    if not isinstance(item, dict) or set(item) != ITEM_MEMBERS:
        return Rejected("malformed", 'a batch item is exactly {"kind", "id", "hlc", "body"}')
    kind, ident, stamp = item["kind"], item["id"], item["hlc"]
    for name, value, limit in (("kind", kind, MAX_KIND_CHARS), ("id", ident, MAX_ID_CHARS), ("hlc", stamp, 32)):
        if not isinstance(value, str) or not 0 < len(value) <= limit:
            return Rejected("malformed", f"a batch item's {name!r} must be 1-{limit} characters")
    if not isinstance(item["body"], dict):
        return Rejected("malformed", "a batch item's 'body' must be an object")
    if kind == BATCH or kind not in allowed:
        return Rejected("malformed", f"kind {kind[:32]!r} in a batch on this topic")
    try:
        wall, _ = hlc_mod.decode(stamp)
    except ValueError as exc:
        return Rejected("malformed", str(exc))
    if wall - now_ms > max_skew_ms:
        return Rejected("clock_skew", f"batch item HLC {wall - now_ms} ms ahead of local time (at most {max_skew_ms} ms)")
    return {"v": VERSION, "fleet": env["fleet"], "kind": kind, "id": ident, "node": env["node"], "hlc": stamp, "body": item["body"]}


def _s(value: str) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()
