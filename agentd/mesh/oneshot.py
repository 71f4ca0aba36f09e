"""The one-shot client for `agentd fleet send`, like paho's ``publish.single``: connect, publish
one signed command, collect and verify the replies to it, disconnect (DESIGN section 7).

A reply counts only when its envelope verifies (``agentd.envelope.check_envelope``) against a
node key the sender knows: ``trust.peers``, the ``--peer-key`` options, and this config's own
node key when it is readable. It must also be of kind ``reply``, be signed by the node whose
``nodes/<node>/reply`` topic carried it, answer this command's id, and have a boolean ``ok``.
Anything else that names this command's id is kept, marked unverified with the reason, and
never counted as ok; whatever names no id of ours, or cannot be read at all, is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.errors import InputError, MeshError, Rejected, TrustError
from agentd.mesh.topics import topic
from agentd.trust.envelope import check_envelope
from agentd.trust.untrusted import parse_json

if TYPE_CHECKING:
    from agentd.config.schema import Config

log = logging.getLogger(__name__)
MAX_UNVERIFIED = 100  # unverified replies kept per command; past this they are only counted
MAX_NODE_CHARS = 64


@dataclass(frozen=True)
class Reply:
    """One answer to the command. ``node`` is the node of the topic it came on; ``reason`` is
    ``"code: detail"`` when it did not verify, and then ``body`` is only what the sender claims."""

    node: str
    verified: bool
    reason: str | None
    body: Any

    @property
    def ok(self) -> bool:
        return self.verified and isinstance(self.body, dict) and self.body.get("ok") is True

    def as_json(self) -> dict[str, Any]:
        return {"node": self.node, "verified": self.verified, "reason": self.reason, "body": self.body}


@dataclass
class Outcome:
    """The replies to one command, and the targeted nodes that gave no verified one."""

    command_id: str
    target: str
    replies: list[Reply] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    dropped: int = 0  # unverified replies past MAX_UNVERIFIED, counted and not kept

    @property
    def ok(self) -> bool:
        """Some reply came, every one verified and ok, and every targeted node answered."""
        return bool(self.replies) and not self.missing and not self.dropped and all(r.ok for r in self.replies)

    def as_json(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "target": self.target, "ok": self.ok,
                "replies": [r.as_json() for r in self.replies], "missing": self.missing, "dropped": self.dropped}


def parse_peer_keys(values: Iterable[str]) -> dict[str, str]:
    """``--peer-key NODE=BASE64`` options as ``{node: key}``; ``InputError`` on a bad one."""
    from agentd.config.base import NAME_RE
    from agentd.trust.keys import public_key_from_b64

    keys: dict[str, str] = {}
    for value in values:
        node, sep, key = value.partition("=")
        if not sep or not NAME_RE.fullmatch(node):
            raise InputError(f"--peer-key {value[:80]!r}: expected NODE=BASE64_PUBLIC_KEY with a node id like node-b")
        try:
            public_key_from_b64(key)
        except TrustError as exc:
            raise InputError(f"--peer-key {node}: {exc}") from None
        keys[node] = key
    return keys


def known_keys(cfg: Config, peer_keys: Mapping[str, str]) -> dict[str, str]:
    """The node keys replies are checked against: this config's own node key if it can be read,
    then ``trust.peers``, then ``peer_keys``, a later source winning for the same node."""
    from agentd.trust.keys import load_key

    keys: dict[str, str] = {}
    # not this node's box, or not its user: then its replies need trust.peers or --peer-key
    with contextlib.suppress(TrustError, OSError):
        keys[cfg.node.id] = load_key(cfg.data_dir).public_b64
    keys.update(cfg.trust.peers)
    keys.update(peer_keys)
    return keys


def read_reply(
    topic_name: str,
    payload: bytes,
    *,
    command_id: str,
    fleet: str,
    keys: Mapping[str, str],
    max_bytes: int,
    max_skew_ms: int,
    accept_v1: bool,
    now_ms: int,
) -> Reply | None:
    """A message from ``nodes/+/reply`` as a ``Reply`` to ``command_id``, or None if it names no
    such command (or cannot be read). Raises nothing for any bytes."""
    parts = topic_name.split("/")
    if len(parts) != 6 or parts[:4] != ["agentd", "v1", fleet, "nodes"] or parts[5] != "reply":
        return None
    node = _printable(parts[4])
    try:
        env = check_envelope(payload, fleet=fleet, max_bytes=max_bytes, key_for=lambda n, _env: keys.get(n),
                             now_ms=now_ms, max_skew_ms=max_skew_ms, accept_v1=accept_v1)
    except Rejected as exc:
        claimed = _claimed_body(payload, max_bytes)
        if claimed is None or claimed.get("command_id") != command_id:
            return None
        return Reply(node, False, f"{exc.reason}: {exc}", claimed)
    body = env["body"]
    if body.get("command_id") != command_id:
        return None
    if env["kind"] != "reply":
        return Reply(node, False, f"wrong_kind: a {_printable(env['kind'])} envelope, not a reply", body)
    if env["node"] != parts[4]:
        return Reply(node, False, f"wrong_node: signed by {_printable(env['node'])}, published on {node}'s reply topic", body)
    if not isinstance(body.get("ok"), bool):
        return Reply(node, False, "malformed: a reply body needs a boolean 'ok'", body)
    return Reply(node, True, None, body)


def _claimed_body(payload: bytes, max_bytes: int) -> dict[str, Any] | None:
    try:
        env = parse_json(payload, max_bytes=max_bytes, what="reply")
    except Rejected:
        return None
    body = env.get("body") if isinstance(env, dict) else None
    return body if isinstance(body, dict) else None


def _printable(text: str) -> str:
    from agentd.config.base import NAME_RE

    return text if NAME_RE.fullmatch(text) else ascii(text[:MAX_NODE_CHARS])


def send_command(
    cfg: Config,
    payload: bytes,
    *,
    command_id: str,
    target: str,
    timeout_s: float,
    peer_keys: Mapping[str, str] | None = None,
    to_topic: str | None = None,
    expect: list[str] | None = None,
) -> Outcome:
    """Publish a signed command and collect the replies to it: all of them until ``timeout_s``
    for ``all``, or until the first verified one from a single target. Used by `agentd fleet send`.

    Targeted nodes: ``target`` itself, or for ``all`` every node of ``trust.peers`` and
    ``peer_keys``; those without a verified reply are ``Outcome.missing``. ``to_topic`` publishes
    elsewhere than ``cmd/<target>`` (a node's witness request on its gossip topic); with ``expect``
    those are the targeted nodes, and the wait ends once each has answered."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    peer_keys = dict(peer_keys or {})
    keys = known_keys(cfg, peer_keys)
    fleet = cfg.node.fleet
    outcome = Outcome(command_id=command_id, target=target)
    verified: set[str] = set()
    seen: set[bytes] = set()
    lock = threading.Lock()
    done = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        try:  # paho logs and swallows what a callback raises, or stops its loop; neither is wanted
            payload = bytes(msg.payload)
            reply = read_reply(str(msg.topic), payload, command_id=command_id, fleet=fleet, keys=keys,
                               max_bytes=cfg.mqtt.max_payload_bytes, max_skew_ms=int(cfg.mesh.max_clock_skew_s * 1000),
                               accept_v1=cfg.mesh.accept_v1, now_ms=int(time.time() * 1000))
            if reply is None:
                return
            with lock:
                if reply.verified:
                    if reply.node in verified:
                        return  # a QoS 1 redelivery, or the node's outbox sending it again
                    verified.add(reply.node)
                else:
                    digest = hashlib.sha256(str(msg.topic).encode() + b"\0" + payload).digest()
                    if digest in seen:
                        return
                    if len(seen) >= MAX_UNVERIFIED:
                        outcome.dropped += 1
                        return
                    seen.add(digest)
                outcome.replies.append(reply)
            if reply.verified and (reply.node == target or (expect and verified >= set(expect))):
                done.set()
        except Exception as exc:
            log.debug("fleet send: unreadable reply on %s: %s", getattr(msg, "topic", "?"), exc)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"agentd-fleet-send-{command_id[:12]}")
    m = cfg.mqtt
    if m.username:
        client.username_pw_set(m.username, Path(m.password_file).read_text().strip() if m.password_file else None)
    if m.tls is not None:
        client.tls_set(ca_certs=m.tls.ca, certfile=m.tls.cert, keyfile=m.tls.key)
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    try:
        client.connect(m.host, m.port, keepalive=30)
    except OSError as exc:
        raise MeshError(f"cannot reach the broker at {m.host}:{m.port}: {exc}") from exc
    client.loop_start()
    try:
        client.subscribe(topic(fleet, "nodes", "+", "reply"), qos=1)
        if not subscribed.wait(10):
            raise MeshError("the broker did not confirm the subscription to replies")
        info = client.publish(to_topic or topic(fleet, "cmd", target), payload, qos=1)
        info.wait_for_publish(10)
        done.wait(timeout_s)
    finally:
        client.loop_stop()
        client.disconnect()
    targeted = sorted(expect) if expect is not None else sorted({*cfg.trust.peers, *peer_keys}) if target == "all" else [target]
    with lock:
        outcome.missing = [n for n in targeted if n not in verified]
    return outcome
