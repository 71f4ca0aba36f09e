"""Canonical JSON and envelopes: the fast path must give exactly RFC 8785's bytes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from agentd.trust.canonical import b64, canonical
from agentd.trust.envelope import Rejected, check_envelope, envelope, envelope_raw
from agentd.trust.keys import create_key, verify

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
    max_leaves=25,
)


@settings(max_examples=1500)
@given(json_values)
def test_canonical_equals_rfc8785(value: object) -> None:
    assert canonical(value) == rfc8785.dumps(value)


def test_spliced_envelope_is_canonical_and_verifies(tmp_path: Path) -> None:
    key, _ = create_key(tmp_path)
    body = {"b": 1.5, "a": ["x", None, True], "ü": "ß"}
    raw = envelope_raw("decision", fleet="f1", node="n1", hlc="1795600000000-0001", body_canonical=canonical(body), key=key, ident="id1")
    env = json.loads(raw)
    assert raw == rfc8785.dumps(env)  # the spliced bytes are the canonical form
    assert raw == envelope("decision", fleet="f1", node="n1", hlc="1795600000000-0001", body=body, key=key, ident="id1")
    checked = check_envelope(raw, fleet="f1", max_bytes=65536, key_for=lambda n, e: key.public_b64, now_ms=1795600000000, max_skew_ms=1000)
    assert checked["body"] == body


def test_tampered_or_future_envelopes_are_rejected(tmp_path: Path) -> None:
    key, _ = create_key(tmp_path)
    raw = envelope("decision", fleet="f1", node="n1", hlc="1795600000000-0000", body={"action": "none"}, key=key)

    def reason(payload: bytes, now_ms: int = 1795600000000, fleet: str = "f1") -> str:
        try:
            check_envelope(payload, fleet=fleet, max_bytes=4096, key_for=lambda n, e: key.public_b64, now_ms=now_ms, max_skew_ms=1000)
        except Rejected as exc:
            return exc.reason
        return "accepted"

    assert reason(raw) == "accepted"
    assert reason(raw.replace(b'"none"', b'"shutdown"')) == "bad_signature"
    assert reason(raw, now_ms=1795600000000 - 60_000) == "clock_skew"
    assert reason(b"x" * 5000) == "oversized"
    assert reason(json.dumps({k: v for k, v in json.loads(raw).items() if k != "sig"}).encode()) == "unsigned"
    assert reason(raw, fleet="f2") == "wrong_fleet"  # the fleet is in the signed bytes: no cross-fleet replay
    v1 = {k: v for k, v in json.loads(raw).items() if k not in ("sig", "fleet")} | {"v": 1}
    v1["sig"] = key.sign(rfc8785.dumps(v1))
    assert reason(rfc8785.dumps(v1)) == "old_version"
    assert check_envelope(rfc8785.dumps(v1), fleet="f1", max_bytes=4096, key_for=lambda n, e: key.public_b64,
                          now_ms=1795600000000, max_skew_ms=1000, accept_v1=True)["v"] == 1  # mesh.accept_v1
    assert reason(b'{"v":2,' * 3000) == "oversized"
    assert reason(b"[" * 2000 + b"]" * 2000) == "too_deep"
    assert reason(rb'{"v":2,"fleet":"f1","kind":"decision","id":"x","node":"n1","hlc":"1795600000000-0000","body":{"a":"\ud800"},"sig":"x"}') == "bad_string"


@settings(max_examples=100)
@given(st.binary(max_size=4096))
def test_libsodium_signs_as_cryptography_does_and_each_checks_the_other(tmp_path_factory: Any, data: bytes) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    key, _ = create_key(tmp_path_factory.mktemp("k"))
    sig = key.sign(data)
    assert base64.b64decode(sig) == key.private.sign(data)  # Ed25519 is deterministic: the same bytes
    assert verify(key.public_b64, data, b64(key.private.sign(data)))
    Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_b64)).verify(base64.b64decode(sig), data)


def test_verify_refuses_what_is_not_a_valid_signature(tmp_path: Path) -> None:
    key, _ = create_key(tmp_path / "a")
    other, _ = create_key(tmp_path / "b")
    data = b'{"v":2}'
    sig = key.sign(data)
    raw = base64.b64decode(sig)
    assert verify(key.public_b64, data, sig)
    assert not verify(other.public_b64, data, sig)  # another key
    assert not verify(key.public_b64, data + b" ", sig)  # other data
    assert not verify(key.public_b64, data, b64(raw[:63]))  # too short
    assert not verify(key.public_b64, data, b64(raw + b"\0"))  # too long
    assert not verify(key.public_b64, data, b64(bytes([raw[0] ^ 1]) + raw[1:]))  # one bit changed
    assert not verify(key.public_b64, data, "not base64!")
    assert not verify("not a key", data, sig)
    assert not verify(b64(b"\0" * 31), data, sig)  # a key of the wrong length
    assert not verify(b64(b"\1" + b"\0" * 31), data, sig)  # a small-order key (libsodium refuses it)
    order = 2**252 + 27742317777372353535851937790883648493  # the group's order: a signature's S must be below it
    s = int.from_bytes(raw[32:], "little") + order  # below 2**256, as S < order < 2**253
    assert not verify(key.public_b64, data, b64(raw[:32] + s.to_bytes(32, "little")))  # S not reduced: malleated
