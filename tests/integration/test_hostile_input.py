"""Hostile input at the wire never costs a node anything (issue 11): the tests from outside.

A corpus of hostile payloads goes, with the real ``mosquitto_pub``, to every topic the node
subscribes to (``agentd.mesh.subscriptions``, its wildcards filled in with the node's own
names, peers' names and skills that exist and do not), at QoS 0 and 1, retained and not;
retained poison also waits on peers' status topics before the node starts. Afterwards the
running daemon has not reconnected, no handler failed, every hostile message is counted
under ``refused`` by path and (where the defect is plain) by its reason, nothing hostile was
decided, stored, learned or obeyed, and a good event is decided exactly once as usual.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentd.config.loader import load_config
from agentd.control.commands import new_command
from agentd.errors import TrustError
from agentd.ids import new_id
from agentd.mesh.inbound import subscriptions
from agentd.state import queries
from agentd.trust.canonical import canonical
from agentd.trust.envelope import envelope
from agentd.trust.hlc import Clock, encode
from agentd.trust.keys import NodeKey, create_key_file
from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc, freezer_config
from tests.integration.test_mesh_link import wait_connected

FLEET, NODE = "it", "it-node"
GOOD_EVENT = {"temperature_c": -18, "door_open_s": 0, "compressor_a": 4}
SKILLS = ("freezer_health", "nope")  # one that exists, one that does not
TEN_YEARS_S = 10 * 365 * 24 * 3600
MAX_PAYLOAD = 64 * 1024  # mqtt.max_payload_bytes by default
ANY = "*"  # refused, for a reason this test does not pin
SKIP = "-"  # no expectation: the node may ignore it (its own topics, a kind that does not belong there)
PATH = {"event": "event", "decisions": "peer", "gossip": "peer", "status": "peer", "cmd": "command"}
PROBLEM_LOG = "failed unexpectedly"


# -- topics -------------------------------------------------------------------


def concrete_topics(filters: list[str], *, node: str, fleet: str, peers: list[str], skills: tuple[str, ...]) -> list[str]:
    """Every topic filter with each wildcard replaced by the concrete names it stands for here."""
    out: list[str] = []
    for f in filters:
        parts = f.split("/")
        choices: list[list[str]] = [[]]
        for i, part in enumerate(parts):
            prev = parts[i - 1] if i else ""
            if part == "+":
                if prev == "events":
                    options = list(skills)
                elif prev == "cmd":
                    options = [node, "all"]
                elif prev in ("nodes", "gossip"):
                    options = [*peers, node]
                elif i == 2:
                    options = [fleet]
                else:
                    options = ["x"]
            elif part == "#":
                options = ["x"]
            else:
                options = [part]
            choices = [[*c, o] for c in choices for o in options]
        out += ["/".join(c) for c in choices]
    return list(dict.fromkeys(out))


def classify(name: str, node: str = NODE) -> tuple[str | None, str]:
    """(topic kind, sender) of a topic: event, decisions, gossip, status, cmd; None for the node's own and others."""
    parts = name.split("/")
    if parts[:2] != ["agentd", "v1"] or len(parts) < 5:
        return None, ""
    rest = parts[3:]
    if rest[0] == "nodes" and len(rest) == 4 and rest[1] == node and rest[2] == "events":
        return "event", node
    if rest[0] == "nodes" and len(rest) == 3 and rest[2] in ("decisions", "status"):
        return (None, rest[1]) if rest[1] == node else (rest[2], rest[1])  # the node ignores its own
    if rest[0] == "gossip" and len(rest) == 2:
        return (None, rest[1]) if rest[1] == node else ("gossip", rest[1])
    if rest[0] == "cmd" and len(rest) == 2:
        return "cmd", rest[1]
    return None, ""


# -- the corpus ---------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """A hostile payload and what the node must do with it on each kind of topic.

    ``expect`` maps ``kind@sender``, a topic kind or a path to a reason code, ANY or SKIP;
    what it does not name must be refused for some reason (ANY).
    """

    name: str
    payload: bytes
    expect: dict[str, str] = field(default_factory=dict)

    def on(self, topic_name: str) -> str | None:
        kind, sender = classify(topic_name)
        if kind is None:
            return None
        for key in (f"{kind}@{sender}", kind, PATH[kind]):
            if key in self.expect:
                value = self.expect[key]
                return None if value == SKIP else value
        return ANY


def everywhere(reason: str) -> dict[str, str]:
    return {"event": reason, "peer": reason, "command": reason}


def nest(n: int, inner: str = "1", *, key: str | None = None) -> str:
    """``inner`` wrapped in ``n`` arrays, or ``n`` objects with member ``key``."""
    if key is None:
        return "[" * n + inner + "]" * n
    return ('{"' + key + '":') * n + inner + "}" * n


def event_text(top: str = "", **fields: str) -> bytes:
    """An event whose data members are written as raw JSON text (so that any token can be placed)."""
    data = {"temperature_c": "-18", "door_open_s": "0", "compressor_a": "4", **fields}
    inner = ",".join(f"{json.dumps(k)}:{v}" for k, v in data.items())
    return ("{" + top + '"data":{' + inner + "}}").encode()


def event_json(**msg: Any) -> bytes:
    return json.dumps(msg).encode()


def envelope_text(body: str, *, kind: str = "decision", node: str = "peer-x") -> bytes:
    """A v2-shaped envelope with a raw JSON body and a garbage signature."""
    head = json.dumps({"v": 2, "fleet": FLEET, "kind": kind, "id": new_id(), "node": node, "hlc": Clock().now()})
    return (head[:-1] + ',"body":' + body + ',"sig":"AAAA"}').encode()


def padded(size: int) -> bytes:
    """A well-formed event of exactly ``size`` bytes (its note is too long to be valid, but that is not the point)."""
    head, tail = b'{"data":{"temperature_c":-18,"door_open_s":0,"compressor_a":4,"note":"', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def signed(kind: str, node: str, body: dict[str, Any], key: NodeKey, *, fleet: str = FLEET, hlc: str | None = None,
           drop: tuple[str, ...] = (), change: dict[str, Any] | None = None, ident: str | None = None) -> bytes:
    """A v2 envelope made by ``agentd.envelope.envelope``, then changed and signed again (unsigned if ``sig`` is dropped)."""
    env = json.loads(envelope(kind, fleet=fleet, node=node, hlc=hlc or Clock().now(), body=body, key=key, ident=ident))
    env.pop("sig")
    for member in drop:
        env.pop(member, None)
    env.update(change or {})
    if "sig" not in drop and "sig" not in (change or {}):
        try:
            env["sig"] = key.sign(canonical(env))
        except TrustError:  # a change canonical JSON cannot carry (2**53, 1e17): nobody can sign it
            env["sig"] = "AAAA"
    return json.dumps(env).encode()


def signed_v1(kind: str, node: str, body: dict[str, Any], key: NodeKey) -> bytes:
    """A correctly signed envelope of version 1 (no fleet in it)."""
    env: dict[str, Any] = {"v": 1, "kind": kind, "id": new_id(), "node": node, "hlc": Clock().now(), "body": body}
    env["sig"] = key.sign(canonical(env))
    return json.dumps(env).encode()


def future_hlc() -> str:
    return encode((time.time_ns() // 1_000_000 + TEN_YEARS_S * 1000, 0))


def wire_corpus(stranger: NodeKey) -> list[Item]:
    """What anyone on the broker can send: bytes, JSON with every bound crossed, wrong shapes, unsigned and forged envelopes."""
    deep = "too_deep"
    sur = "\ud800"
    items = [
        # nesting: arrays and objects, at the top, inside an event's data, inside an envelope's body
        Item("arrays-1000", nest(1000).encode(), everywhere(deep)),
        Item("arrays-2000", nest(2000).encode(), everywhere(deep)),
        Item("arrays-20000", nest(20000).encode(), everywhere(deep)),  # 40 kB: under the size limit
        Item("objects-1000", nest(1000, key="a").encode(), everywhere(deep)),
        Item("objects-2000", nest(2000, key="a").encode(), everywhere(deep)),
        Item("objects-12000", nest(12000, key="").encode(), everywhere(deep)),  # 60 kB
        Item("objects-20000", nest(20000, key="a").encode(), everywhere("oversized")),  # 100 kB
        Item("mixed-3000", ('[{"a":' * 3000 + "1" + "}]" * 3000).encode(), everywhere(deep)),
        Item("deep-in-event-data", event_text(note=nest(2000, '"x"')), everywhere(deep)),
        Item("deep-object-in-event-data", event_text(note=nest(2000, '"x"', key="k")), everywhere(deep)),
        Item("deep-in-envelope-body", envelope_text('{"x":' + nest(2000) + "}"), everywhere(deep)),
        Item("deep-in-command-body", envelope_text('{"args":' + nest(20000) + "}", kind="command", node="alice"), everywhere(deep)),
        # numbers
        Item("int-5000-digits", event_text(temperature_c="9" * 5000), everywhere("number_too_long")),
        Item("negative-int-5000-digits", event_text(temperature_c="-" + "9" * 5000), everywhere("number_too_long")),
        Item("float-5000-digits", event_text(temperature_c="-18." + "0" * 5000), everywhere("number_too_long")),
        Item("exponent-5000-digits", event_text(door_open_s="1e" + "9" * 5000), everywhere("number_too_long")),
        Item("int-5000-digits-in-envelope", envelope_text('{"created_at":' + "1" * 5000 + "}"), everywhere("number_too_long")),
        Item("int-5000-digits-in-command", envelope_text('{"expires_at":' + "1" * 5000 + "}", kind="command", node="alice"),
             everywhere("number_too_long")),
        Item("exponent-1e999999", event_text(temperature_c="1e999999")),
        Item("exponent--1e999999", event_text(temperature_c="-1e999999")),
        Item("exponent-1e400-in-envelope", envelope_text('{"created_at":1e400}')),
        Item("2**53-on-temperature", event_text(temperature_c=str(2**53))),
        Item("2**53+1-on-compressor", event_text(compressor_a=str(2**53 + 1))),
        Item("1e17-on-door", event_text(door_open_s="1e17")),
        Item("-1e17-on-temperature", event_text(temperature_c="-1e17")),
        Item("2**53-in-envelope", envelope_text('{"created_at":' + str(2**53) + "}")),
        Item("nan", event_text(temperature_c="NaN"), everywhere("not_json")),
        Item("infinity", event_text(door_open_s="Infinity"), everywhere("not_json")),
        Item("-infinity", event_text(temperature_c="-Infinity"), everywhere("not_json")),
        Item("nan-in-envelope", envelope_text('{"created_at":NaN}'), everywhere("not_json")),
        # strings: lone surrogates as JSON escapes (valid JSON syntax, not text), in values and in keys
        Item("lone-high-surrogate", event_text(note='"\\ud800"'), everywhere("bad_string")),
        Item("lone-low-surrogate", event_text(note='"\\udfff"'), everywhere("bad_string")),
        Item("reversed-surrogate-pair", event_text(note='"a\\udc00\\ud800b"'), everywhere("bad_string")),
        Item("surrogate-in-data-key", event_text(**{sur: "1"}), everywhere("bad_string")),
        Item("surrogate-in-top-key", event_text(top='"\\udfff":1,'), everywhere("bad_string")),
        Item("surrogate-in-id", event_json(id="x" + sur, data=GOOD_EVENT), everywhere("bad_string")),
        Item("surrogate-in-envelope-body", envelope_text('{"id":"\\udfff"}'), everywhere("bad_string")),
        Item("surrogate-in-envelope-key", envelope_text('{"\\ud800":1}'), everywhere("bad_string")),
        Item("surrogate-in-command", envelope_text('{"cmd":"\\ud800"}', kind="command", node="alice"), everywhere("bad_string")),
        Item("surrogate-as-utf8-bytes", event_text().replace(b'"door_open_s"', b'"\xed\xa0\x80"')),
        # bytes that are not UTF-8, or not JSON at all
        Item("invalid-utf8", b"\xff\xfe\xfd\xfc", everywhere("not_json")),
        Item("invalid-utf8-in-string", b'{"data":{"note":"\xff\xfe"}}', everywhere("not_json")),
        Item("overlong-utf8", b'{"data":{"note":"\xc0\xaf"}}', everywhere("not_json")),
        Item("binary", bytes(range(256)) * 4),
        Item("not-json", b"not json", everywhere("not_json")),
        Item("truncated", b'{"data":{"temperature_c":', everywhere("not_json")),
        Item("trailing-garbage", event_json(data=GOOD_EVENT) + b" x", everywhere("not_json")),
        Item("whitespace", b" \n\t ", everywhere("not_json")),
        Item("empty", b"", {"peer": SKIP, "command": SKIP}),  # what clears a retained message; events must still refuse it
        Item("null", b"null"),
        Item("empty-list", b"[]"),
        Item("number", b"5"),
        Item("string", b'"x"'),
        Item("true", b"true"),
        # size
        Item("just-over-64k", padded(MAX_PAYLOAD + 1), everywhere("oversized")),
        Item("garbage-over-64k", b"x" * 70_000, everywhere("oversized")),
        Item("exactly-64k", padded(MAX_PAYLOAD)),
        # an event with the wrong type at every level
        Item("data-as-list", event_json(data=[1, 2]), {"event": "invalid"}),
        Item("data-as-string", event_json(data="x"), {"event": "invalid"}),
        Item("data-as-number", event_json(data=5)),
        Item("data-as-null", event_json(data=None)),
        Item("data-missing", event_json(id="no-data")),
        Item("temperature-as-object", event_json(data={**GOOD_EVENT, "temperature_c": {}})),
        Item("temperature-as-list", event_json(data={**GOOD_EVENT, "temperature_c": [-18]})),
        Item("temperature-as-bool", event_json(data={**GOOD_EVENT, "temperature_c": True})),
        Item("temperature-as-null", event_json(data={**GOOD_EVENT, "temperature_c": None})),
        Item("temperature-as-string", event_json(data={**GOOD_EVENT, "temperature_c": "-18"})),
        Item("temperature-missing", event_json(data={"door_open_s": 0, "compressor_a": 4})),
        Item("unknown-field", event_json(data={**GOOD_EVENT, "humidity": 3})),
        Item("note-as-object", event_json(data={**GOOD_EVENT, "note": {}})),
        Item("note-as-list", event_json(data={**GOOD_EVENT, "note": ["x"]})),
        Item("note-as-bool", event_json(data={**GOOD_EVENT, "note": False})),
        Item("id-as-number", event_json(id=7, data=GOOD_EVENT)),
        Item("id-as-object", event_json(id={"a": 1}, data=GOOD_EVENT)),
        Item("id-as-list", event_json(id=["a"], data=GOOD_EVENT)),
        Item("ts-as-string", event_json(ts="now", data=GOOD_EVENT)),
        Item("ts-as-object", event_json(ts={}, data=GOOD_EVENT)),
        Item("ts-as-bool", event_json(ts=True, data=GOOD_EVENT)),
        Item("unknown-top-member", event_json(data=GOOD_EVENT, extra=1)),
        # envelopes anyone can make: unsigned, forged, signed by nobody this node trusts
        Item("unsigned-decision", signed("decision", "peer-x", {"id": "d", "action": "none", "skill": "s", "created_at": time.time()},
                                         stranger, drop=("sig",)), {"decisions": "unsigned", "gossip": "unsigned"}),
        Item("unsigned-command", signed("command", "alice", new_command("status", target=NODE), stranger, drop=("sig",)),
             {"cmd": "unsigned"}),
        Item("decision-by-stranger", signed("decision", "peer-x", {"id": "d2", "action": "none", "skill": "s", "created_at": time.time()},
                                            stranger), {"decisions": "unknown_signer", "gossip": "unknown_signer"}),
        Item("status-without-key-by-stranger", signed("status", "peer-x", {"status": "online"}, stranger),
             {"status": "unknown_signer"}),
        Item("command-by-stranger", signed("command", "mallory", new_command("status", target=NODE), stranger),
             {"cmd": "unknown_signer"}),
        Item("command-garbage-signature", signed("command", "alice", new_command("status", target=NODE), stranger,
                                                 change={"sig": "AAAA"})),
    ]
    base = {"id": "d3", "action": "none", "skill": "s", "created_at": time.time()}
    for member in ("v", "fleet", "kind", "id", "node", "hlc", "body"):
        items.append(Item(f"envelope-without-{member}", signed("decision", "peer-x", base, stranger, drop=(member,))))
        items.append(Item(f"command-without-{member}", signed("command", "alice", new_command("status", target=NODE), stranger,
                                                              drop=(member,))))
    for member, value in (("v", "2"), ("v", 2**53), ("v", 1e17), ("v", True), ("id", 7), ("id", ""), ("node", {}),
                          ("hlc", 5), ("hlc", "x"), ("hlc", "9007199254740992-0000"), ("hlc", "0000000000001-99999999"),
                          ("body", []), ("body", "x"), ("sig", 5), ("sig", "A" * 5000), ("fleet", 7), ("kind", [])):
        items.append(Item(f"envelope-{member}-as-{value!r:.20}", signed("decision", "peer-x", base, stranger, change={member: value})))
    return items


def tofu_corpus(rogue: NodeKey, other: NodeKey) -> list[Item]:
    """With trust.allow_unknown_peers, a status offering its own key is checked past the signature: bad ones there."""
    offer = {"status": "online", "public_key": rogue.public_b64}
    on_status = {"status": ANY}
    return [
        Item("tofu-status-10-years-ahead", signed("status", "peer-x", offer, rogue, hlc=future_hlc()), {"status": "clock_skew"}),
        Item("tofu-status-wrong-fleet", signed("status", "peer-x", offer, rogue, fleet="other"), {"status": "wrong_fleet"}),
        Item("tofu-status-v1", signed_v1("status", "peer-x", offer, rogue), {"status": "old_version"}),
        Item("tofu-status-other-key", signed("status", "peer-x", {"status": "online", "public_key": other.public_b64}, rogue),
             on_status),
        Item("tofu-status-key-as-number", signed("status", "peer-x", {"status": "online", "public_key": 5}, rogue), on_status),
        Item("tofu-status-no-status", signed("status", "peer-x", {"public_key": rogue.public_b64}, rogue), on_status),
        Item("tofu-status-deep-status", signed("status", "peer-x", {"status": {"a": {"b": 1}}, "public_key": rogue.public_b64}, rogue),
             on_status),
    ]


DROP: Any = object()  # a body member to leave out


def trusted_corpus(peer: NodeKey, operator: NodeKey, template: dict[str, Any]) -> list[Item]:
    """Signed by the configured peer (peer-a) and operator (alice): these reach past the signature check."""

    def decision(**change: Any) -> dict[str, Any]:
        body = {**template, "id": new_id(), "node": "peer-a", "created_at": round(time.time(), 6), **change}
        return {k: v for k, v in body.items() if v is not DROP}

    def on_peer(reason: str, *, fits: tuple[str, ...] = ("decisions", "gossip")) -> dict[str, str]:
        """``reason`` on the topics where this kind belongs; elsewhere on peer-a's topics no expectation
        (on another sender's topic it is refused anyway: an envelope of peer-a on peer-x's topic)."""
        out = {"status@peer-a": SKIP, "decisions": SKIP, "gossip": SKIP}
        out.update(dict.fromkeys(fits, reason))
        if "status" in fits:
            out["status@peer-a"] = reason
        return out

    ahead = time.time() + TEN_YEARS_S
    items = [
        Item("decision-without-id", signed("decision", "peer-a", decision(id=DROP), peer), on_peer(ANY)),
        Item("decision-without-action", signed("decision", "peer-a", decision(action=DROP), peer), on_peer(ANY)),
        Item("decision-without-created_at", signed("decision", "peer-a", decision(created_at=DROP), peer), on_peer(ANY)),
        Item("decision-created-10-years-ahead", signed("decision", "peer-a", decision(created_at=ahead), peer), on_peer(ANY)),
        Item("decision-created_at-2**53-1", signed("decision", "peer-a", decision(created_at=2**53 - 1), peer), on_peer(ANY)),
        Item("decision-created_at-string", signed("decision", "peer-a", decision(created_at="now"), peer), on_peer(ANY)),
        Item("decision-created_at-negative", signed("decision", "peer-a", decision(created_at=-1), peer), on_peer(ANY)),
        Item("decision-action-object", signed("decision", "peer-a", decision(action={"a": 1}), peer), on_peer(ANY)),
        Item("decision-id-number", signed("decision", "peer-a", decision(id=7), peer), on_peer(ANY)),
        Item("decision-id-5000-chars", signed("decision", "peer-a", decision(id="i" * 5000), peer), on_peer(ANY)),
        Item("decision-hlc-10-years-ahead", signed("decision", "peer-a", decision(), peer, hlc=future_hlc()), on_peer("clock_skew")),
        Item("decision-wrong-fleet", signed("decision", "peer-a", decision(), peer, fleet="other"), on_peer("wrong_fleet")),
        Item("decision-v1", signed_v1("decision", "peer-a", decision(), peer), on_peer("old_version")),
        Item("decision-signed-by-operator", signed("decision", "peer-a", decision(), operator), on_peer("bad_signature")),
        Item("decision-unsigned", signed("decision", "peer-a", decision(), peer, drop=("sig",)), on_peer("unsigned")),
        Item("decision-unknown-kind", signed("x", "peer-a", decision(), peer), on_peer(ANY)),
        Item("digest-without-counts", signed("digest", "peer-a", {"since": time.time() - 60}, peer), on_peer(ANY, fits=("gossip",))),
        Item("digest-without-since", signed("digest", "peer-a", {"counts": {}}, peer), on_peer(ANY, fits=("gossip",))),
        Item("digest-counts-as-list", signed("digest", "peer-a", {"since": 0, "counts": [1]}, peer), on_peer(ANY, fits=("gossip",))),
        Item("digest-count-as-string", signed("digest", "peer-a", {"since": 0, "counts": {NODE: "x"}}, peer),
             on_peer(ANY, fits=("gossip",))),
        Item("digest-since-string", signed("digest", "peer-a", {"since": "x", "counts": {}}, peer), on_peer(ANY, fits=("gossip",))),
        Item("status-deep-status", signed("status", "peer-a", {"status": {"a": 1}}, peer), on_peer(ANY, fits=("status",))),
        Item("status-without-status", signed("status", "peer-a", {}, peer), on_peer(ANY, fits=("status",))),
    ]
    for member in ("v", "fleet", "kind", "id", "node", "hlc", "body"):
        items.append(Item(f"decision-envelope-without-{member}", signed("decision", "peer-a", decision(), peer, drop=(member,)),
                          on_peer(ANY)))

    def command(**change: Any) -> dict[str, Any]:
        body = {**new_command("status", target=NODE), **change}
        return {k: v for k, v in body.items() if v is not DROP}

    on_cmd: dict[str, str] = {}
    items += [
        Item("command-expired", signed("command", "alice", command(expires_at=time.time() - 5), operator), {"cmd": "expired"}),
        Item("command-v1", signed_v1("command", "alice", command(), operator), {"cmd": "old_version"}),
        Item("command-wrong-fleet", signed("command", "alice", command(), operator, fleet="other"), {"cmd": "wrong_fleet"}),
        Item("command-hlc-10-years-ahead", signed("command", "alice", command(), operator, hlc=future_hlc()), {"cmd": "clock_skew"}),
        Item("command-unsigned", signed("command", "alice", command(), operator, drop=("sig",)), {"cmd": "unsigned"}),
        Item("command-signed-by-peer", signed("command", "alice", command(), peer), {"cmd": "bad_signature"}),
        Item("command-without-expires_at", signed("command", "alice", command(expires_at=DROP), operator), on_cmd),
        Item("command-expires-10-years-ahead", signed("command", "alice", command(expires_at=ahead), operator), on_cmd),
        Item("command-expires_at-2**53-1", signed("command", "alice", command(expires_at=2**53 - 1), operator), on_cmd),
        Item("command-expires_at-string", signed("command", "alice", command(expires_at="soon"), operator), on_cmd),
        Item("command-args-as-list", signed("command", "alice", command(args=[1]), operator), on_cmd),
        Item("command-cmd-as-number", signed("command", "alice", command(cmd=5), operator), on_cmd),
        Item("command-unknown-cmd", signed("command", "alice", command(cmd="rm -rf /"), operator), on_cmd),
        Item("command-target-object", signed("command", "alice", command(target={}), operator), on_cmd),
        Item("command-for-another-node", signed("command", "alice", command(target="other-node"), operator), on_cmd),
        Item("command-kind-decision", signed("decision", "alice", command(), operator), on_cmd),
    ]
    for member in ("v", "fleet", "kind", "id", "node", "hlc", "body"):
        items.append(Item(f"command-envelope-without-{member}", signed("command", "alice", command(), operator, drop=(member,)), on_cmd))
    return items


def poison(stranger: NodeKey) -> dict[str, Item]:
    """Retained on peers' status topics before the node starts: it meets them when it subscribes."""
    return {
        f"agentd/v1/{FLEET}/nodes/poison-deep/status": Item("poison-deep", nest(20000).encode(), {"peer": "too_deep"}),
        f"agentd/v1/{FLEET}/nodes/poison-int/status": Item(
            "poison-int", envelope_text('{"status":' + "7" * 5000 + "}", kind="status", node="poison-int"), {"peer": "number_too_long"}),
        f"agentd/v1/{FLEET}/nodes/poison-surrogate/status": Item(
            "poison-surrogate", envelope_text('{"status":"\\ud800"}', kind="status", node="poison-surrogate"), {"peer": "bad_string"}),
        f"agentd/v1/{FLEET}/nodes/poison-bytes/status": Item("poison-bytes", b"\xff\x00garbage", {"peer": "not_json"}),
        f"agentd/v1/{FLEET}/nodes/poison-big/status": Item("poison-big", padded(MAX_PAYLOAD + 1), {"peer": "oversized"}),
        f"agentd/v1/{FLEET}/nodes/poison-skew/status": Item(
            "poison-skew", signed("status", "poison-skew", {"status": "online", "public_key": stranger.public_b64}, stranger,
                                  hlc=future_hlc())),
        f"agentd/v1/{FLEET}/nodes/poison-v1/status": Item(
            "poison-v1", signed_v1("status", "poison-v1", {"status": "online", "public_key": stranger.public_b64}, stranger)),
    }


# -- driving the node ---------------------------------------------------------


def broker_status(node: DaemonProc) -> dict[str, Any]:
    assert node.proc is not None
    if node.proc.poll() is not None:
        raise AssertionError(f"the daemon exited {node.proc.returncode}; log:\n{node.log()}")
    reply = node.request({"op": "status"})
    assert reply["ok"], reply
    return dict(reply["result"]["broker"])


def settle(node: DaemonProc, *, quiet_s: float = 1.0, give_up_s: float = 120.0) -> dict[str, Any]:
    """The node's broker status once it has handled everything sent to it: connected, and no
    counter moved for ``quiet_s``. Gives up (returning what it has) only after ``give_up_s``:
    the assertions that follow then say what is wrong; no test asserts how long this takes."""

    def mark(b: dict[str, Any]) -> tuple[Any, ...]:
        return (b.get("connected"), sorted(b.get("refused", {}).items()), sorted(b.get("rejected", {}).items()),
                b.get("events_in"), b.get("events_refused"), b.get("handler_errors"), b.get("published"),
                b.get("reconnects"), b.get("failures"))

    give_up = time.monotonic() + give_up_s
    last: tuple[Any, ...] | None = None
    since = time.monotonic()
    while True:
        b = broker_status(node)
        now = time.monotonic()
        m = mark(b)
        if m != last:
            last, since = m, now
        elif b.get("connected") and now - since >= quiet_s:
            return b
        if now > give_up:
            return b
        time.sleep(0.1)


def payload_file(payload: bytes, folder: Path) -> Path | None:
    if not payload:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{new_id()}.bin"
    path.write_bytes(payload)
    return path


def publish(port: int, name: str, payload: bytes, *, qos: int, retain: bool, folder: Path) -> None:
    pub(port, name, payload_file(payload, folder), qos=qos, retain=retain)


def pub(port: int, name: str, path: Path | None, *, qos: int, retain: bool) -> None:
    """One message with the real mosquitto_pub: from a file, so any bytes and any size go as they are (None: empty)."""
    cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", name, "-q", str(qos)]
    if retain:
        cmd.append("-r")
    cmd += ["-f", str(path)] if path is not None else ["-n"]
    r = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    assert r.returncode == 0, f"mosquitto_pub {name}: {r.stderr.decode(errors='replace')}"


COMBOS = ((0, False), (1, False), (1, True), (0, True))  # QoS and retain, in turn


@dataclass
class Sent:
    retained: set[str] = field(default_factory=set)
    need: Counter[str] = field(default_factory=Counter)  # path -> hostile messages it must refuse
    reasons: dict[str, list[str]] = field(default_factory=dict)  # "path.reason" -> the items that must show it
    count: int = 0


def send_corpus(broker: Broker, items: list[Item], topics: list[str], folder: Path) -> Sent:
    """Every item to every topic, QoS 0 and 1, retained and not, eight publishers at a time."""
    sent = Sent()
    jobs = []
    for i, item in enumerate(items):
        file = payload_file(item.payload, folder)
        for j, name in enumerate(topics):
            qos, retain = COMBOS[(i + j) % len(COMBOS)]
            jobs.append((name, file, qos, retain))
            if retain:
                sent.retained.add(name)
            expect = item.on(name)
            kind, _ = classify(name)
            if expect is None or kind is None:
                continue
            path = PATH[kind]
            sent.need[path] += 1
            if expect != ANY:
                sent.reasons.setdefault(f"{path}.{expect}", []).append(f"{item.name} on {name}")
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda job: pub(broker.port, job[0], job[1], qos=job[2], retain=job[3]), jobs))
    sent.count = len(jobs)
    return sent


def clear_retained(broker: Broker, names: set[str], folder: Path) -> None:
    for name in sorted(names):
        publish(broker.port, name, b"", qos=1, retain=True, folder=folder)


def refused_by_path(refused: dict[str, int]) -> Counter[str]:
    out: Counter[str] = Counter()
    for key, n in refused.items():
        out[key.partition(".")[0]] += n
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def assert_refusals(sent: Sent, before: dict[str, Any], after: dict[str, Any]) -> None:
    """Every hostile message counted under its path, and each plain defect under its reason."""
    got = delta(after.get("refused", {}), before.get("refused", {}))
    by_path = refused_by_path(got)
    short = {p: (by_path.get(p, 0), n) for p, n in sent.need.items() if by_path.get(p, 0) < n}
    missing = {r: where[:3] for r, where in sorted(sent.reasons.items()) if got.get(r, 0) < 1}
    assert not short and not missing, (
        f"refusals counted per path (got, hostile messages sent) fall short: {short}; "
        f"reasons not counted (with items that should show them): {missing}; refused during the corpus: {got}"
    )
    internal = {k: v for k, v in after.get("refused", {}).items() if k.endswith(".internal_error")}
    assert not internal, f"hostile input met a bug at a handler boundary: {internal}"


def count_decisions(node: DaemonProc, event_id: str | None = None) -> int:
    conn = queries.open_readonly(node.data_dir)
    try:
        if event_id is None:
            return int(conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
        return int(conn.execute("SELECT COUNT(*) FROM decisions WHERE event_id = ?", (event_id,)).fetchone()[0])
    finally:
        conn.close()


def read(node: DaemonProc, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = queries.open_readonly(node.data_dir)
    try:
        return list(conn.execute(sql, args).fetchall())
    except sqlite3.Error as exc:
        raise AssertionError(f"{sql}: {exc}") from exc
    finally:
        conn.close()


def assert_unharmed(node: DaemonProc, broker: Broker, base: dict[str, Any]) -> None:
    """The node paid nothing: same session, no failure, no handler bug, alive, and a good event decided once as usual."""
    now = settle(node)
    assert now["connected"] is True
    assert now["reconnects"] == base["reconnects"], f"hostile input cost {now['reconnects'] - base['reconnects']} reconnect(s)"
    assert now["failures"] == base["failures"] == 0, f"the link failed unexpectedly {now['failures']} time(s)"
    assert now.get("handler_errors", 0) == 0, f"{now.get('handler_errors')} bug(s) met at a handler boundary"
    log = (node.data_dir.parent / "daemon.log").read_text(errors="replace")
    at = log.find(PROBLEM_LOG)
    assert at < 0, f"the daemon log says the link {PROBLEM_LOG}:\n{log[max(0, at - 1500) : at + 2500]}"
    assert node.proc is not None and node.proc.poll() is None

    good = json.dumps({"id": "good-after-corpus", "data": GOOD_EVENT}).encode()
    publish(broker.port, f"agentd/v1/{FLEET}/nodes/{NODE}/events/freezer_health", good, qos=1, retain=False,
            folder=node.data_dir.parent / "corpus")
    give_up = time.monotonic() + 120
    while count_decisions(node, "good-after-corpus") == 0 and time.monotonic() < give_up:
        time.sleep(0.05)
    after = settle(node)
    assert count_decisions(node, "good-after-corpus") == 1
    conn = queries.open_readonly(node.data_dir)
    try:
        decision = queries.find_by_event(conn, "good-after-corpus")
    finally:
        conn.close()
    assert decision is not None and decision["fallback_reason"] != "overloaded", decision
    assert after["reconnects"] == base["reconnects"] and after["failures"] == 0
    assert node.proc.poll() is None


# -- the tests ----------------------------------------------------------------


def _start(tmp_path: Path, broker: Broker, trust: dict[str, Any]) -> tuple[DaemonProc, Path]:
    data = tmp_path / "data"
    data.mkdir()
    cfg = freezer_config(data, mqtt_port=broker.port)
    cfg["trust"] = trust
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    node = DaemonProc(config_path=path, data_dir=data)
    node.start()
    wait_connected(node)
    return node, path


@pytest.fixture
def stranger(tmp_path: Path) -> NodeKey:
    return create_key_file(tmp_path / "keys" / "stranger.key")[0]


@pytest.fixture
def node_factory(tmp_path: Path, broker: Broker) -> Iterator[Any]:
    started: list[DaemonProc] = []

    def make(trust: dict[str, Any]) -> tuple[DaemonProc, Path]:
        node, path = _start(tmp_path, broker, trust)
        started.append(node)
        return node, path

    yield make
    for node in started:
        node.stop()


def _poison_first(tmp_path: Path, broker: Broker, stranger: NodeKey) -> dict[str, Item]:
    retained = poison(stranger)
    folder = tmp_path / "corpus"
    folder.mkdir(exist_ok=True)
    for name, item in retained.items():
        publish(broker.port, name, item.payload, qos=1, retain=True, folder=folder)
    return retained


def _assert_poison_refused(retained: dict[str, Item], base: dict[str, Any]) -> None:
    """The retained poison met at subscribe time was refused, for its reasons, and cost no reconnect."""
    refused = base.get("refused", {})
    assert refused_by_path(refused)["peer"] >= len(retained), f"retained poison not all refused: {refused}"
    for item in retained.values():
        reason = item.expect.get("peer")
        if reason is not None:
            assert refused.get(f"peer.{reason}", 0) >= 1, f"{item.name}: no peer.{reason} in {refused}"
    assert base["reconnects"] == 0 and base["failures"] == 0, f"retained poison cost the fresh node its session: {base}"


def test_hostile_corpus_with_unknown_peers_allowed(tmp_path: Path, broker: Broker, stranger: NodeKey, node_factory: Any) -> None:
    """Anyone on the broker, against a node that learns unknown peers' keys on first use."""
    rogue = create_key_file(tmp_path / "keys" / "rogue.key")[0]
    retained = _poison_first(tmp_path, broker, stranger)
    node, path = node_factory({"allow_unknown_peers": True, "operators": []})
    base = settle(node)
    _assert_poison_refused(retained, base)

    topics = concrete_topics(subscriptions(load_config(path).config), node=NODE, fleet=FLEET, peers=["peer-x"], skills=SKILLS)
    assert {classify(t)[0] for t in topics} >= {"event", "decisions", "gossip", "status", "cmd"}, topics
    decided = count_decisions(node)
    sent = send_corpus(broker, wire_corpus(stranger) + tofu_corpus(rogue, stranger), topics, tmp_path / "corpus")
    after = settle(node)
    assert_refusals(sent, base, after)
    assert count_decisions(node) == decided, "a hostile event was decided"
    assert read(node, "SELECT node, decision_id FROM fleet_decisions WHERE node != ?", NODE) == [], "a hostile peer decision was stored"
    assert read(node, "SELECT node, public_key FROM peers") == [], "a hostile status was taken (or its key learned)"
    accepted = [b for (b,) in read(node, "SELECT body FROM audit WHERE kind = 'command'") if json.loads(b).get("accepted")]
    assert accepted == [], "a hostile command was obeyed"

    clear_retained(broker, sent.retained | set(retained), tmp_path / "corpus")
    assert_unharmed(node, broker, base)


def test_hostile_corpus_with_configured_peer_and_operator(tmp_path: Path, broker: Broker, stranger: NodeKey,
                                                          node_factory: Any) -> None:
    """Messages signed by the configured peer and operator get past the signature check: what they say is checked too."""
    peer, _ = create_key_file(tmp_path / "keys" / "peer.key")
    alice, _ = create_key_file(tmp_path / "keys" / "alice.key")
    retained = _poison_first(tmp_path, broker, stranger)
    node, path = node_factory({
        "peers": {"peer-a": peer.public_b64},
        "operators": [{"name": "alice", "key": alice.public_b64, "role": "admin"}],
    })
    # a real decision record is the template of the peer's decisions (and of the bad ones)
    reply = node.request({"op": "submit", "skill": "freezer_health", "data": GOOD_EVENT, "id": "template"})
    assert reply["ok"], reply
    conn = queries.open_readonly(node.data_dir)
    try:
        template = queries.find_by_event(conn, "template")
    finally:
        conn.close()
    assert template is not None
    template.pop("late_answer", None)
    base = settle(node)
    _assert_poison_refused(retained, base)

    folder = tmp_path / "corpus"
    # what is good, twice: a peer decision (the second is a duplicate) and a command (the second is a replay)
    good_id = new_id()
    good = signed("decision", "peer-a", {**template, "id": good_id, "node": "peer-a", "event_id": "peer-event",
                                         "created_at": round(time.time(), 6)}, peer)
    for name in (f"agentd/v1/{FLEET}/nodes/peer-a/decisions", f"agentd/v1/{FLEET}/gossip/peer-a"):
        publish(broker.port, name, good, qos=1, retain=False, folder=folder)
    command_id = new_id()
    status_cmd = signed("command", "alice", new_command("status", target=NODE), alice, ident=command_id)
    for name in (f"agentd/v1/{FLEET}/cmd/{NODE}", f"agentd/v1/{FLEET}/cmd/all"):
        publish(broker.port, name, status_cmd, qos=1, retain=False, folder=folder)

    topics = concrete_topics(subscriptions(load_config(path).config), node=NODE, fleet=FLEET, peers=["peer-a", "peer-x"],
                             skills=SKILLS)
    assert {classify(t)[0] for t in topics} >= {"event", "decisions", "gossip", "status", "cmd"}, topics
    decided = count_decisions(node)
    sent = send_corpus(broker, wire_corpus(stranger) + trusted_corpus(peer, alice, template), topics, folder)
    sent.reasons.setdefault("peer.duplicate", []).append("the good decision again on gossip")
    sent.reasons.setdefault("command.replayed", []).append("the good command again on cmd/all")
    after = settle(node)
    assert_refusals(sent, base, after)
    assert count_decisions(node) == decided, "a hostile event was decided"
    stored = read(node, "SELECT node, decision_id FROM fleet_decisions WHERE node != ?", NODE)
    assert stored == [("peer-a", good_id)], f"peer decisions stored: {stored} (only the good one, once)"
    commands = [json.loads(b) for (b,) in read(node, "SELECT body FROM audit WHERE kind = 'command'")]
    accepted = [c for c in commands if c.get("accepted")]
    assert [c["command_id"] for c in accepted] == [command_id], f"commands obeyed: {accepted} (only the good one, once)"
    assert {p for (p,) in read(node, "SELECT node FROM peers")} <= {"peer-a"}

    clear_retained(broker, sent.retained | set(retained), folder)
    assert_unharmed(node, broker, base)
