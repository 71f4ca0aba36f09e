"""Signed fleet commands against a running node on a real broker: accepted, refused, audited;
and `agentd fleet send` believing only replies that verify (DESIGN section 7)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from agentd.config.loader import load_config
from agentd.control.commands import new_command
from agentd.ids import new_id
from agentd.mesh.oneshot import send_command
from agentd.mesh.topics import topic
from agentd.trust.envelope import envelope
from agentd.trust.hlc import Clock
from agentd.trust.keys import NodeKey, create_key_file, load_key
from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc, cli, freezer_config
from tests.integration.test_mesh_link import wait_connected

FLEET = "it"


def _node(tmp_path: Path, port: int, operators: list[dict[str, Any]]) -> DaemonProc:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    cfg = freezer_config(data, mqtt_port=port)
    cfg["trust"] = {"operators": operators}
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    node = DaemonProc(config_path=path, data_dir=data)
    node.start()
    wait_connected(node)
    return node


def _operator_config(tmp_path: Path, port: int, name: str, peers: dict[str, str]) -> Path:
    """The config an operator's `agentd fleet send` runs with: the broker and fleet, trust.peers,
    and a node id and data dir of its own (no node key there), as on a laptop."""
    folder = tmp_path / name
    (folder / "data").mkdir(parents=True, exist_ok=True)
    cfg = freezer_config(folder / "data", mqtt_port=port, node_id="op-laptop")
    cfg["trust"] = {"peers": peers}
    path = folder / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _send(node: DaemonProc, key: NodeKey, name: str, cmd: str, *, target: str = "it-node", args: dict[str, Any] | None = None,
          ttl: float = 60, payload: bytes | None = None) -> list[dict[str, Any]]:
    """Send and return the replies; each one must verify against the daemon's key."""
    ident = new_id()
    if payload is None:
        body = new_command(cmd, target=target, args=args, ttl_s=ttl)
        payload = envelope("command", fleet=FLEET, node=name, hlc=Clock().now(), body=body, key=key, ident=ident)
    else:
        ident = json.loads(payload)["id"]
    outcome = send_command(load_config(node.config_path).config, payload, command_id=ident, target="it-node", timeout_s=10,
                           peer_keys={"it-node": load_key(node.data_dir).public_b64})
    assert outcome.replies and all(r.verified for r in outcome.replies), [r.as_json() for r in outcome.replies]
    return [r.as_json() for r in outcome.replies]


def _unanswered(node: DaemonProc, key: NodeKey, name: str, cmd: str, *, target: str = "it-node", args: dict[str, Any] | None = None,
                payload: bytes | None = None) -> None:
    """A command the node refuses without an answer (its operator signature did not verify, or it is
    replayed or for another node): no reply comes; the refusal is counted and audited as a summary."""
    ident = new_id()
    if payload is None:
        payload = envelope("command", fleet=FLEET, node=name, hlc=Clock().now(), body=new_command(cmd, target=target, args=args),
                           key=key, ident=ident)
    else:
        ident = json.loads(payload)["id"]
    outcome = send_command(load_config(node.config_path).config, payload, command_id=ident, target="it-node", timeout_s=2)
    assert outcome.replies == [] and outcome.missing == ["it-node"], outcome


def test_fleet_commands_are_checked_applied_and_audited(tmp_path: Path, broker: Broker) -> None:
    keys = tmp_path / "keys"
    alice, _ = create_key_file(keys / "alice.key")
    bob, _ = create_key_file(keys / "bob.key")
    mallory, _ = create_key_file(keys / "mallory.key")
    node = _node(tmp_path, broker.port, [
        {"name": "alice", "key": alice.public_b64, "role": "admin"},
        {"name": "bob", "key": bob.public_b64, "role": "viewer"},
    ])
    try:
        # the CLI, as an operator uses it
        operator = _operator_config(tmp_path, broker.port, "op", {})
        r = cli(operator, "fleet", "send", "set_mode", "--target", "it-node", "--args", '{"mode": "rules_only"}',
                "--key", str(keys / "alice.key"), "--peer-key", f"it-node={load_key(node.data_dir).public_b64}", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        out = json.loads(r.stdout)
        [reply] = out["replies"]
        assert out["ok"] and out["missing"] == [] and reply["verified"] and reply["reason"] is None
        assert reply["body"]["ok"] and reply["body"]["result"] == {"mode": "rules_only"} and reply["node"] == "it-node"
        assert node.request({"op": "status"})["result"]["mode"] == "rules_only"

        [ok] = _send(node, bob, "bob", "status")
        assert ok["body"]["ok"] and ok["body"]["result"]["mode"] == "rules_only"

        def refused(replies: list[dict[str, Any]]) -> str:
            [rep] = replies
            assert rep["body"]["ok"] is False
            return str(rep["body"]["reason"])

        assert refused(_send(node, bob, "bob", "set_mode", args={"mode": "auto"})) == "forbidden"
        _unanswered(node, mallory, "mallory", "status")  # unknown_signer
        _unanswered(node, mallory, "alice", "set_mode", args={"mode": "auto"})  # bad_signature
        expired = envelope("command", fleet=FLEET, node="alice", hlc=Clock().now(), key=alice, ident=new_id(),
                           body={**new_command("status", target="it-node"), "expires_at": time.time() - 5})
        assert refused(_send(node, alice, "alice", "status", payload=expired)) == "expired"
        for _ in range(3):  # a captured signed refusal, replayed: answered once, then only counted
            _unanswered(node, alice, "alice", "status", payload=expired)
        forbidden = envelope("command", fleet=FLEET, node="bob", hlc=Clock().now(), key=bob, ident=new_id(),
                             body=new_command("set_mode", target="it-node", args={"mode": "auto"}))
        assert refused(_send(node, bob, "bob", "set_mode", payload=forbidden)) == "forbidden"
        _unanswered(node, bob, "bob", "set_mode", payload=forbidden)
        stale = envelope("command", fleet=FLEET, node="alice", hlc=f"{int((time.time() - 25 * 3600) * 1000):013d}-0000",
                         key=alice, ident=new_id(), body=new_command("status", target="it-node"))
        _unanswered(node, alice, "alice", "status", payload=stale)  # signed over 24 h ago: never answered
        refusals = node.request({"op": "status"})["result"]["broker"]["refused"]
        assert refusals.get("command.replayed", 0) >= 4 and refusals.get("command.stale") == 1, refusals
        _unanswered(node, alice, "alice", "status", target="other-node")  # wrong_target
        once = envelope("command", fleet=FLEET, node="alice", hlc=Clock().now(), key=alice, ident=new_id(), body=new_command("status", target="it-node"))
        assert _send(node, alice, "alice", "status", payload=once)[0]["body"]["ok"]
        _unanswered(node, alice, "alice", "status", payload=once)  # replayed
        assert node.request({"op": "status"})["result"]["mode"] == "rules_only"  # nothing refused changed anything

        # set_config: a whole document, validated, applied, rolled back when it is bad
        cfg = yaml.safe_load(node.config_path.read_text())
        cfg["lifecycle"]["release"] = "it-2"
        [applied] = _send(node, alice, "alice", "set_config", args={"config": yaml.safe_dump(cfg)})
        assert applied["body"]["ok"], applied
        assert node.request({"op": "status"})["result"]["lifecycle"]["release"] == "it-2"
        [bad] = _send(node, alice, "alice", "set_config", args={"config": "skills: []\n"})
        assert bad["body"]["ok"] is False and "skills" in bad["body"]["error"]
        assert yaml.safe_load(node.config_path.read_text())["lifecycle"]["release"] == "it-2"

        # set_stage: promote the node; its decisions carry the new stage from then on
        [promoted] = _send(node, alice, "alice", "set_stage", args={"stage": "prod"})
        assert promoted["body"]["ok"] and promoted["body"]["result"] == {"stage": "prod"}
        event = {"temperature_c": -19.0, "door_open_s": 3.0, "compressor_a": 5.2}
        assert node.request({"op": "submit", "skill": "freezer_health", "data": event})["result"]["lifecycle"]["stage"] == "prod"
        assert refused(_send(node, bob, "bob", "set_stage", args={"stage": "dev"})) == "forbidden"

        # activate_model: switch the cascade's first stage to another declared model
        assert _send(node, alice, "alice", "set_mode", args={"mode": "auto"})[0]["body"]["ok"]
        [act] = _send(node, alice, "alice", "activate_model", args={"skill": "freezer_health", "stage": 0, "model": "slow"})
        assert act["body"]["ok"] and act["body"]["result"]["model"] == "slow"
        rec = node.request({"op": "submit", "skill": "freezer_health", "data": event})["result"]
        assert rec["stages"][0]["model"] == "slow" and rec["source"] == "rules"  # the slow model misses the deadline
        [nope] = _send(node, alice, "alice", "activate_model", args={"skill": "freezer_health", "stage": 0, "model": "ghost"})
        assert nope["body"]["ok"] is False and "unknown model" in nope["body"]["error"]

        assert node.stop() == 0  # a clean stop audits the refusal summaries not yet written
        conn = sqlite3.connect(node.data_dir / "agentd.db")
        audited = [json.loads(b) for (b,) in conn.execute("SELECT body FROM audit WHERE kind = 'command' ORDER BY seq")]
        reasons = [a.get("reason") for a in audited if not a["accepted"]]
        assert {"forbidden", "expired"} <= set(reasons)
        assert sum(1 for a in audited if a["accepted"]) == 7
        summaries = [json.loads(b) for (b,) in conn.execute("SELECT body FROM audit WHERE kind = 'input_refused' ORDER BY seq")]
        assert {"unknown_signer", "bad_signature", "replayed", "wrong_target"} <= {x["reason"] for x in summaries if x["path"] == "command"}
        assert cli(node.config_path, "audit", "verify").returncode == 0
    finally:
        node.stop()


@contextlib.contextmanager
def _forger(port: int, forge: Callable[[str], list[tuple[str, bytes]]]) -> Iterator[None]:
    """A client on the broker that answers each command it sees on cmd/# with ``forge(command_id)``,
    a list of (topic, payload) it publishes, while `agentd fleet send` waits for replies."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"forger-{new_id()[:8]}")
    subscribed = threading.Event()

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        for name, payload in forge(json.loads(msg.payload)["id"]):
            c.publish(name, payload, qos=1)

    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe(topic(FLEET, "cmd", "#"), qos=1)
        assert subscribed.wait(10)
        yield
    finally:
        client.loop_stop()
        client.disconnect()


def _reply_topic(node: str) -> str:
    return topic(FLEET, "nodes", node, "reply")


def _claimed(ident: str) -> dict[str, Any]:
    return {"command_id": ident, "cmd": "status", "ok": True, "result": {"mode": "auto"}}


def _fleet_send(config: Path, alice_key: Path, *args: str) -> subprocess.CompletedProcess[str]:
    r = cli(config, "fleet", "send", "status", "--key", str(alice_key), *args)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_fleet_send_believes_only_replies_that_verify(tmp_path: Path, broker: Broker) -> None:
    keys = tmp_path / "keys"
    alice, _ = create_key_file(keys / "alice.key")
    mallory, _ = create_key_file(keys / "mallory-node.key")  # a node key nobody trusts
    other, _ = create_key_file(keys / "node-b.key")  # node-b's key; node-b never runs
    node = _node(tmp_path, broker.port, [{"name": "alice", "key": alice.public_b64, "role": "admin"}])
    node_key = load_key(node.data_dir).public_b64
    assert node_key == json.loads(cli(node.config_path, "keys", "show", "--json").stdout)["public_key"]
    alice_key = keys / "alice.key"
    trusting = _operator_config(tmp_path, broker.port, "op-trusting", {"it-node": node_key})
    try:
        # (b) the daemon's genuine reply verifies: with its key in trust.peers, with --peer-key,
        # and with the node's own config (its own key file); a single target returns at once
        t0 = time.monotonic()
        r = _fleet_send(trusting, alice_key, "--target", "it-node", "--timeout", "30", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert time.monotonic() - t0 < 20
        out = json.loads(r.stdout)
        assert out["ok"] and out["missing"] == [] and out["dropped"] == 0 and out["target"] == "it-node"
        [reply] = out["replies"]
        assert reply["node"] == "it-node" and reply["verified"] and reply["reason"] is None and reply["body"]["ok"]
        bare = _operator_config(tmp_path, broker.port, "op-bare", {})
        r = _fleet_send(bare, alice_key, "--target", "it-node", "--timeout", "20", "--peer-key", f"it-node={node_key}")
        assert r.returncode == 0 and r.stdout.startswith("it-node: ok"), r.stdout + r.stderr
        assert _fleet_send(node.config_path, alice_key, "--target", "it-node", "--timeout", "20").returncode == 0

        # without the key, or with the wrong one, the same genuine reply is not believed
        r = _fleet_send(bare, alice_key, "--target", "it-node", "--timeout", "3", "--json")
        [reply] = json.loads(r.stdout)["replies"]
        assert r.returncode == 1 and not reply["verified"] and reply["reason"].startswith("unknown_signer: ")
        wrong = _operator_config(tmp_path, broker.port, "op-wrong", {"it-node": mallory.public_b64})
        r = _fleet_send(wrong, alice_key, "--target", "it-node", "--timeout", "3")
        assert r.returncode == 1 and "it-node: UNVERIFIED (bad_signature: " in r.stdout and "it-node: no verified reply" in r.stdout, r.stdout
        r = _fleet_send(bare, alice_key, "--peer-key", "it-node=not-a-key")
        assert r.returncode == 2 and "--peer-key it-node" in r.stderr, r.stderr

        # (a) forged replies while fleet send waits: unsigned, signed by an unknown key, signed with the
        # wrong key in a real node's name, plus junk the client must shrug off
        def forge(ident: str) -> list[tuple[str, bytes]]:
            unsigned = {"v": 2, "fleet": FLEET, "kind": "reply", "id": new_id(), "node": "ghost-node", "hlc": Clock().now(),
                        "body": _claimed(ident)}
            return [
                (_reply_topic("ghost-node"), json.dumps(unsigned).encode()),
                (_reply_topic("ghost-node"), envelope("reply", fleet=FLEET, node="ghost-node", hlc=Clock().now(), body=_claimed(ident), key=mallory)),
                (_reply_topic("it-node"), envelope("reply", fleet=FLEET, node="it-node", hlc=Clock().now(), body=_claimed(ident), key=mallory)),
                (_reply_topic("junk"), b"\xff\xfe not json"),
                (_reply_topic("junk"), b"[" * 5000),
                (_reply_topic("junk"), b"null"),
                (_reply_topic("junk"), json.dumps({"body": {"command_id": "someone-else", "ok": True}}).encode()),
                (_reply_topic("junk"), envelope("reply", fleet=FLEET, node="junk", hlc=Clock().now(), body=_claimed("other-id"), key=mallory)),
            ]

        with _forger(broker.port, forge):
            r = _fleet_send(trusting, alice_key, "--timeout", "3", "--json")
        assert r.returncode == 1, r.stdout + r.stderr
        out = json.loads(r.stdout)
        assert not out["ok"] and out["missing"] == [] and out["dropped"] == 0
        good = [x for x in out["replies"] if x["verified"]]
        assert [(x["node"], x["body"]["ok"]) for x in good] == [("it-node", True)]
        bad = sorted((x["node"], x["reason"].split(":")[0]) for x in out["replies"] if not x["verified"])
        assert bad == [("ghost-node", "unknown_signer"), ("ghost-node", "unsigned"), ("it-node", "bad_signature")], out

        def ghost(ident: str) -> list[tuple[str, bytes]]:
            return [(_reply_topic("ghost-node"), envelope("reply", fleet=FLEET, node="ghost-node", hlc=Clock().now(), body=_claimed(ident), key=mallory))]

        with _forger(broker.port, ghost):
            r = _fleet_send(trusting, alice_key, "--timeout", "3")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "ghost-node: UNVERIFIED (unknown_signer: no trusted key for 'ghost-node')" in r.stdout, r.stdout
        assert "it-node: ok" in r.stdout and "ghost-node: ok" not in r.stdout

        # (c) a targeted node in trust.peers that does not answer: named, exit 1
        both = _operator_config(tmp_path, broker.port, "op-both", {"it-node": node_key, "node-b": other.public_b64})
        r = _fleet_send(both, alice_key, "--timeout", "3")
        assert r.returncode == 1 and "it-node: ok" in r.stdout and "node-b: no reply\n" in r.stdout, r.stdout
        r = _fleet_send(both, alice_key, "--timeout", "3", "--json")
        out = json.loads(r.stdout)
        assert r.returncode == 1 and out["missing"] == ["node-b"] and [x["node"] for x in out["replies"]] == ["it-node"]
        r = _fleet_send(both, alice_key, "--target", "node-b", "--timeout", "1")
        assert r.returncode == 1 and "node-b: no reply\n" in r.stdout, r.stdout
        r = _fleet_send(trusting, alice_key, "--target", "node-c", "--timeout", "1")
        assert r.returncode == 1 and "node-c: no reply (no key for it: add it to trust.peers or pass --peer-key node-c=KEY)" in r.stdout

        assert node.proc is not None and node.proc.poll() is None  # the junk hurt nobody
    finally:
        node.stop()
