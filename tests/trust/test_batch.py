"""agentd.trust.batch: many bodies under one signature (DESIGN section 6, "Batches"), checked item by item."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agentd.errors import Rejected
from agentd.trust.batch import MAX_ITEMS, batch_envelope, item_bytes, pack, unbatch
from agentd.trust.canonical import canonical
from agentd.trust.envelope import check_envelope
from agentd.trust.hlc import Clock
from agentd.trust.keys import NodeKey, create_key


def now_ms() -> int:
    """The time now, as the receiver reads it (not at import: the suite may reach a test minutes later)."""
    return int(time.time() * 1000)


@pytest.fixture
def key(tmp_path: Path) -> NodeKey:
    return create_key(tmp_path)[0]


def _decision(i: int) -> dict[str, object]:
    return {"id": f"d{i}", "action": "alert", "skill": "s", "created_at": 1.0, "note": "x" * 50}


def _items(n: int, clock: Clock) -> list[bytes]:
    return [item_bytes("decision", f"d{i}", clock.now(), canonical(_decision(i))) for i in range(n)]


def _check(payload: bytes, key: NodeKey, max_bytes: int = 65536) -> dict[str, object]:
    return check_envelope(payload, fleet="f", max_bytes=max_bytes, key_for=lambda _n, _e: key.public_b64, now_ms=int(time.time() * 1000),
                          max_skew_ms=30_000)


def test_a_batch_verifies_once_and_stands_for_each_item_as_its_own_envelope(key: NodeKey) -> None:
    clock = Clock()
    items = _items(3, clock)
    payload = batch_envelope(items, fleet="f", node="n1", hlc=clock.now(), key=key)
    env = _check(payload, key)
    out = unbatch(env, allowed=("decision", "state"), now_ms=now_ms(), max_skew_ms=30_000)
    assert [e["id"] for e in out if isinstance(e, dict)] == ["d0", "d1", "d2"]
    first = out[0]
    assert isinstance(first, dict)
    assert first == {"v": 2, "fleet": "f", "kind": "decision", "id": "d0", "node": "n1", "hlc": first["hlc"], "body": _decision(0)}


def test_a_receiver_without_agentds_code_verifies_a_batch_as_documented(key: NodeKey) -> None:
    """DESIGN section 6: Ed25519 over the RFC 8785 form of the envelope without "sig"; here with the
    stdlib encoder (sorted keys, no spaces) and the cryptography package only."""
    clock = Clock()
    payload = batch_envelope(_items(2, clock), fleet="f", node="n1", hlc=clock.now(), key=key)
    env = json.loads(payload)
    sig = base64.b64decode(env.pop("sig"))
    signed = json.dumps(env, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_b64)).verify(sig, signed)  # raises if it does not verify
    assert env["kind"] == "batch" and [i["id"] for i in env["body"]["items"]] == ["d0", "d1"]
    assert set(env["body"]["items"][0]) == {"kind", "id", "hlc", "body"}


def test_a_tampered_item_breaks_the_whole_batch(key: NodeKey) -> None:
    clock = Clock()
    payload = batch_envelope(_items(3, clock), fleet="f", node="n1", hlc=clock.now(), key=key)
    tampered = payload.replace(b'"action":"alert","created_at":1,"id":"d1"', b'"action":"none","created_at":1,"id":"d1"')
    assert tampered != payload
    with pytest.raises(Rejected) as exc:
        _check(tampered, key)
    assert exc.value.reason == "bad_signature"


def test_an_oversize_batch_is_refused_whole(key: NodeKey) -> None:
    clock = Clock()
    too_many = batch_envelope(_items(MAX_ITEMS + 1, clock), fleet="f", node="n1", hlc=clock.now(), key=key)
    env = _check(too_many, key, max_bytes=1 << 20)
    with pytest.raises(Rejected) as exc:
        unbatch(env, allowed=("decision",), now_ms=now_ms(), max_skew_ms=30_000)
    assert exc.value.reason == "oversized"
    with pytest.raises(Rejected) as exc:  # over the receiver's byte bound: refused before its signature is even looked at
        _check(too_many, key, max_bytes=16384)
    assert exc.value.reason == "oversized"


def test_a_bad_item_is_refused_alone_and_the_batch_shape_whole(key: NodeKey) -> None:
    clock = Clock()
    good = item_bytes("decision", "ok", clock.now(), canonical(_decision(0)))
    nested = item_bytes("batch", "nest", clock.now(), b'{"items":[]}')
    wrong_kind = item_bytes("status", "st", clock.now(), b'{"status":"online"}')
    ahead = item_bytes("decision", "late", f"{now_ms() + 3_600_000}-0000", canonical(_decision(1)))
    extra = b'{"body":{},"extra":1,"hlc":"1700000000000-0000","id":"x","kind":"decision"}'
    env = _check(batch_envelope([good, nested, wrong_kind, ahead, extra], fleet="f", node="n1", hlc=clock.now(), key=key), key)
    out = unbatch(env, allowed=("decision", "state", "batch"), now_ms=now_ms(), max_skew_ms=30_000)
    assert isinstance(out[0], dict) and out[0]["id"] == "ok"
    assert [r.reason for r in out[1:] if isinstance(r, Rejected)] == ["malformed", "malformed", "clock_skew", "malformed"]
    for body in ({"items": []}, {"items": "x"}, {"items": [{}], "more": 1}, {"items": [json.loads(good), json.loads(good)]}):
        with pytest.raises(Rejected):
            unbatch({"fleet": "f", "node": "n1", "body": body}, allowed=("decision",), now_ms=now_ms(), max_skew_ms=30_000)


def test_pack_keeps_each_batch_within_its_bounds_and_the_order(key: NodeKey) -> None:
    clock = Clock()
    items = _items(600, clock)
    batches, alone = pack(items, max_bytes=8192)
    assert not alone and [i for b in batches for i in b] == items
    for b in batches:
        assert len(batch_envelope(b, fleet="f" * 64, node="n" * 64, hlc=clock.now(), key=key)) <= 8192
    by_count, _ = pack(items, max_bytes=1 << 24)
    assert [len(b) for b in by_count] == [MAX_ITEMS, MAX_ITEMS, 600 - 2 * MAX_ITEMS]
    big = item_bytes("decision", "big", clock.now(), canonical({"x": "y" * 9000}))
    batches, alone = pack([items[0], big, items[1]], max_bytes=8192)
    assert alone == [big] and batches == [[items[0], items[1]]]
