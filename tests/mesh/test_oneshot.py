"""agentd.oneshot.read_reply: which replies `agentd fleet send` believes, and junk that never raises."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agentd.errors import InputError
from agentd.ids import new_id
from agentd.mesh.oneshot import Outcome, Reply, parse_peer_keys, read_reply
from agentd.trust.canonical import canonical
from agentd.trust.envelope import envelope
from agentd.trust.hlc import Clock, encode
from agentd.trust.keys import NodeKey, create_key_file

FLEET = "it"
CMD = "cmd-1"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, NodeKey]:
    return {name: create_key_file(tmp_path / f"{name}.key")[0] for name in ("node-a", "node-b", "mallory")}


def _read(keys: dict[str, NodeKey], payload: bytes, *, node: str = "node-a", accept_v1: bool = False, fleet: str = FLEET) -> Reply | None:
    trusted = {n: k.public_b64 for n, k in keys.items() if n != "mallory"}
    return read_reply(f"agentd/v1/{fleet}/nodes/{node}/reply", payload, command_id=CMD, fleet=FLEET, keys=trusted,
                      max_bytes=65536, max_skew_ms=30_000, accept_v1=accept_v1, now_ms=int(time.time() * 1000))


def _reply(key: NodeKey, *, node: str = "node-a", kind: str = "reply", **body: Any) -> bytes:
    return envelope(kind, fleet=FLEET, node=node, hlc=Clock().now(), key=key, body={"command_id": CMD, "cmd": "status", "ok": True, **body})


def test_a_signed_reply_from_its_own_topic_verifies(keys: dict[str, NodeKey]) -> None:
    r = _read(keys, _reply(keys["node-a"], result={"mode": "auto"}))
    assert r is not None and r.verified and r.ok and r.reason is None and r.node == "node-a"
    assert r.as_json() == {"node": "node-a", "verified": True, "reason": None,
                           "body": {"command_id": CMD, "cmd": "status", "ok": True, "result": {"mode": "auto"}}}
    refused = _read(keys, _reply(keys["node-a"], ok=False, error="forbidden"))
    assert refused is not None and refused.verified and not refused.ok


@pytest.mark.parametrize(("payload", "node", "reason"), [
    (lambda k: _reply(k["mallory"], node="ghost"), "ghost", "unknown_signer"),
    (lambda k: _reply(k["mallory"]), "node-a", "bad_signature"),
    (lambda k: _reply(k["node-b"], node="node-b"), "node-a", "wrong_node"),  # node-b's reply replayed on node-a's topic
    (lambda k: _reply(k["node-a"], kind="decision"), "node-a", "wrong_kind"),
    (lambda k: _reply(k["node-a"], ok="yes"), "node-a", "malformed"),
    (lambda k: json.dumps({"v": 2, "fleet": FLEET, "kind": "reply", "id": new_id(), "node": "node-a", "hlc": Clock().now(),
                           "body": {"command_id": CMD, "ok": True}}).encode(), "node-a", "unsigned"),
    (lambda k: envelope("reply", fleet="other", node="node-a", hlc=Clock().now(), key=k["node-a"],
                        body={"command_id": CMD, "ok": True}), "node-a", "wrong_fleet"),
    (lambda k: envelope("reply", fleet=FLEET, node="node-a", hlc=encode((int(time.time() * 1000) + 3_600_000, 0)), key=k["node-a"],
                        body={"command_id": CMD, "ok": True}), "node-a", "clock_skew"),
])
def test_replies_that_do_not_verify_are_kept_unverified(keys: dict[str, NodeKey], payload: Any, node: str, reason: str) -> None:
    r = _read(keys, payload(keys), node=node)
    assert r is not None and not r.verified and not r.ok and r.node == node
    assert r.reason is not None and r.reason.startswith(f"{reason}: "), r.reason


def _v1(key: NodeKey) -> bytes:
    env = {"v": 1, "kind": "reply", "id": new_id(), "node": "node-a", "hlc": Clock().now(), "body": {"command_id": CMD, "ok": True}}
    return json.dumps({**env, "sig": key.sign(canonical(env))}).encode()


def test_v1_replies_only_during_a_rolling_upgrade(keys: dict[str, NodeKey]) -> None:
    old = _read(keys, _v1(keys["node-a"]))
    assert old is not None and not old.verified and old.reason is not None and old.reason.startswith("old_version: ")
    upgrading = _read(keys, _v1(keys["node-a"]), accept_v1=True)
    assert upgrading is not None and upgrading.verified


@pytest.mark.parametrize("payload", [
    b"", b"\xff\xfe", b"null", b"[]", b"[" * 5000, b"1" * 100, b"x" * 70_000, b'{"body": []}', b'{"body": {"command_id": 7}}',
    b'{"v": 2, "body": {"command_id": "cmd-2", "ok": true}}', b'{"body": {"command_id": "cmd-1"}, "v": NaN}',
])
def test_junk_and_other_commands_are_ignored_without_raising(keys: dict[str, NodeKey], payload: bytes) -> None:
    assert _read(keys, payload) is None


def test_other_commands_and_other_topics_are_ignored(keys: dict[str, NodeKey]) -> None:
    other = envelope("reply", fleet=FLEET, node="node-a", hlc=Clock().now(), key=keys["node-a"], body={"command_id": "cmd-2", "ok": True})
    assert _read(keys, other) is None
    assert _read(keys, _reply(keys["node-a"]), fleet="elsewhere") is None
    odd = _read(keys, _reply(keys["mallory"], node="x"), node="\x1b[2J")
    assert odd is not None and odd.node == "'\\x1b[2J'" and not odd.verified  # printed escaped, never raw


def test_outcome_is_ok_only_when_every_reply_verified_ok_and_nobody_is_missing() -> None:
    good = Reply("node-a", True, None, {"ok": True})
    forged = Reply("ghost", False, "unsigned: from 'ghost'", {"ok": True})
    assert Outcome("c", "all", [good]).ok
    assert not Outcome("c", "all", []).ok
    assert not Outcome("c", "all", [good, forged]).ok
    assert not Outcome("c", "all", [good], missing=["node-b"]).ok
    assert not Outcome("c", "all", [good], dropped=1).ok
    assert not Outcome("c", "node-a", [Reply("node-a", True, None, {"ok": False})]).ok


def test_peer_key_options(keys: dict[str, NodeKey]) -> None:
    k = keys["node-a"].public_b64
    assert parse_peer_keys([f"node-a={k}", f"node-b={k}"]) == {"node-a": k, "node-b": k}
    for bad in ("node-a", f"Node A={k}", "node-a=not-base64", "node-a=AAAA"):
        with pytest.raises(InputError):
            parse_peer_keys([bad])
