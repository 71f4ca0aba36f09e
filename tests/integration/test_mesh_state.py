"""The fleet-state map on a real broker (issue 16): an operator sets a site key with their own key and
two nodes' rules act on it; a node's decisions set its own keys; foreign and forged writes are refused
and counted; a node that missed a write gets it from the anti-entropy digests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from agentd.control.commands import new_command
from agentd.trust.envelope import envelope
from agentd.trust.hlc import Clock
from agentd.trust.keys import NodeKey, create_key, create_key_file
from tests.integration.broker import Broker, free_port
from tests.integration.conftest import DaemonProc, cli, freezer_config
from tests.integration.test_mesh_link import wait_connected

NORMAL = {"temperature_c": -19.0, "door_open_s": 3.0, "compressor_a": 5.2}
MAINTENANCE = {"name": "maintenance", "when": 'fleet_value("site/maintenance") == true && action != "alert"', "action": "alert"}
WRITES = [{"action": "alert", "key": "alerting", "value": {"why": "maintenance"}, "ttl_s": 600}]


def _nodes(tmp_path: Path, port: int, operators: list[dict[str, Any]], port_b: int | None = None,
           **mqtt_: Any) -> tuple[DaemonProc, DaemonProc, dict[str, NodeKey]]:
    keys = {n: create_key(tmp_path / n / "data")[0] for n in ("node-a", "node-b")}
    procs = []
    for name, peer in (("node-a", "node-b"), ("node-b", "node-a")):
        data = tmp_path / name / "data"
        cfg = freezer_config(data, mqtt_port=port_b if name == "node-b" and port_b else port, node_id=name)
        cfg["mqtt"].update(mqtt_)
        cfg["trust"] = {"operators": operators, "peers": {peer: keys[peer].public_b64}}
        skill = cfg["skills"][0]
        skill["guards"] = [MAINTENANCE]
        skill["fleet_state"] = WRITES
        path = tmp_path / name / "agentd.yaml"
        path.write_text(yaml.safe_dump(cfg))
        procs.append(DaemonProc(config_path=path, data_dir=data))
    return procs[0], procs[1], keys


def _operator(tmp_path: Path, port: int, name: str = "laptop") -> Path:
    folder = tmp_path / name
    (folder / "data").mkdir(parents=True)
    path = folder / "agentd.yaml"
    path.write_text(yaml.safe_dump(freezer_config(folder / "data", mqtt_port=port, node_id="op-laptop")))
    return path


def _wait(pred: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _state(node: DaemonProc) -> dict[str, Any]:
    r = cli(node.config_path, "fleet-state", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["state"]  # type: ignore[no-any-return]


def _refused(node: DaemonProc) -> dict[str, int]:
    return node.request({"op": "status"})["result"]["broker"]["refused"]  # type: ignore[no-any-return]


def _publish(port: int, topic: str, payload: bytes) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    pub.publish(topic, payload, qos=1).wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()


def test_an_operator_key_steers_both_nodes_and_foreign_writes_are_refused(tmp_path: Path, broker: Broker) -> None:
    alice, _ = create_key_file(tmp_path / "keys" / "alice.key")
    victor, _ = create_key_file(tmp_path / "keys" / "victor.key")
    mallory, _ = create_key_file(tmp_path / "keys" / "mallory.key")
    operators = [{"name": "alice", "key": alice.public_b64, "role": "operator"}, {"name": "victor", "key": victor.public_b64, "role": "viewer"}]
    a, b, keys = _nodes(tmp_path, broker.port, operators)
    laptop = _operator(tmp_path, broker.port)
    for n in (a, b):
        n.start()
        wait_connected(n)
    try:
        before = b.request({"op": "submit", "skill": "freezer_health", "data": NORMAL, "id": "before"})["result"]
        assert before["action"] == "none" and before["guard"] is None

        # alice sets the site key through node-a alone; node-b gets it from node-a's gossip, and checks alice's signature itself
        r = cli(laptop, "fleet", "set", "site/maintenance", "true", "--expires-in", "3600", "--target", "node-a",
                "--key", str(tmp_path / "keys" / "alice.key"), "--peer-key", f"node-a={keys['node-a'].public_b64}", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        [reply] = json.loads(r.stdout)["replies"]
        assert reply["body"]["result"]["outcome"] == "applied" and reply["body"]["result"]["writer"] == "operator:alice"
        _wait(lambda: "site/maintenance" in _state(b))
        for n in (a, b):
            entry = _state(n)["site/maintenance"]
            assert entry["value"] is True and entry["writer"] == "operator:alice" and entry["live"] and entry["expires_at"]
            rec = n.request({"op": "submit", "skill": "freezer_health", "data": NORMAL, "id": "during"})["result"]
            assert (rec["action"], rec["guard"]) == ("alert", "maintenance"), rec
        # that alert set each node's own key, which the other one holds too
        _wait(lambda: {"nodes/node-a/alerting", "nodes/node-b/alerting"} <= set(_state(a)) & set(_state(b)))
        assert _state(b)["nodes/node-a/alerting"]["writer"] == "node-a"
        assert "fleet state" in cli(b.config_path, "fleet-state").stdout

        # a viewer may not write; the refusal is answered (victor's signature verified)
        r = cli(laptop, "fleet", "set", "site/maintenance", "false", "--target", "node-a", "--key", str(tmp_path / "keys" / "victor.key"),
                "--peer-key", f"node-a={keys['node-a'].public_b64}", "--json")
        assert r.returncode == 1 and json.loads(r.stdout)["replies"][0]["body"]["reason"] == "forbidden"

        # node-a (its own, valid key) writes node-b's namespace; node-a relays "alice's" write signed by mallory
        hlc = Clock().now()
        foreign = json.loads(envelope("state_write", fleet="it", node="node-a", hlc=hlc, key=keys["node-a"],
                                      body={"key": "nodes/node-b/alerting", "unset": True}))
        forged = json.loads(envelope("command", fleet="it", node="alice", hlc=hlc, key=mallory,
                                     body=new_command("fleet_unset", target="all", args={"key": "site/maintenance"})))
        for origin in (foreign, forged):
            _publish(broker.port, "agentd/v1/it/gossip/node-a",
                     envelope("state", fleet="it", node="node-a", hlc=Clock().now(), body={"origin": origin}, key=keys["node-a"]))
        _wait(lambda: _refused(b).get("state.not_owner") == 1 and _refused(b).get("state.bad_signature") == 1)
        assert _state(b)["nodes/node-b/alerting"]["live"] and _state(b)["site/maintenance"]["live"]  # nothing changed

        # alice clears it (to every node); the rules are back to normal everywhere
        r = cli(laptop, "fleet", "unset", "site/maintenance", "--key", str(tmp_path / "keys" / "alice.key"),
                "--peer-key", f"node-a={keys['node-a'].public_b64}", "--peer-key", f"node-b={keys['node-b'].public_b64}", "--json", "--timeout", "3")
        assert r.returncode == 0, r.stdout + r.stderr
        for n in (a, b):
            _wait(lambda n=n: _state(n)["site/maintenance"]["deleted"])
            rec = n.request({"op": "submit", "skill": "freezer_health", "data": NORMAL, "id": "after"})["result"]
            assert (rec["action"], rec["guard"]) == ("none", None), rec
        assert cli(b.config_path, "audit", "verify").returncode == 0
    finally:
        a.stop()
        b.stop()


def test_a_node_that_missed_a_write_gets_it_from_the_digests(tmp_path: Path) -> None:
    """The broker keeps 3 messages for an offline node and drops the rest: the relayed write among them."""
    broker = Broker(folder=tmp_path, extra="max_queued_messages 3\n")
    broker.start()
    alice, _ = create_key_file(tmp_path / "keys" / "alice.key")
    a, b, keys = _nodes(tmp_path, broker.port, [{"name": "alice", "key": alice.public_b64, "role": "admin"}], digest_interval_s=0.5)
    laptop = _operator(tmp_path, broker.port)
    try:
        for n in (a, b):
            n.start()
            wait_connected(n)
        b.stop()
        for i in range(5):  # fill node-b's queue first
            assert a.request({"op": "submit", "skill": "freezer_health", "data": NORMAL, "id": f"while-{i}"})["ok"]
        r = cli(laptop, "fleet", "set", "site/generator_power", '{"since": "06:10"}', "--target", "node-a",
                "--key", str(tmp_path / "keys" / "alice.key"), "--peer-key", f"node-a={keys['node-a'].public_b64}")
        assert r.returncode == 0, r.stdout + r.stderr
        b.start()
        wait_connected(b)
        _wait(lambda: _state(b).get("site/generator_power", {}).get("value") == {"since": "06:10"}, timeout=60)
        assert a.request({"op": "status"})["result"]["broker"].get("state_resent", 0) > 0
    finally:
        a.stop()
        b.stop()
        broker.stop()


def test_concurrent_writes_on_both_sides_of_a_partition_heal_to_one_value(tmp_path: Path) -> None:
    """Two bridged brokers, one node on each; split, each side's operator writes the same key and
    each node its own; after the heal (no message of the split crosses the new bridge) the digests
    bring both nodes to the same map: the later write of the key everywhere, both nodes' keys."""
    queue = "max_queued_messages 100000\n"
    b1 = Broker(folder=tmp_path, extra=queue)
    b1.start()
    p2 = free_port()

    def bridged() -> str:
        return queue + f"connection heal\naddress 127.0.0.1:{b1.port}\ntopic agentd/v1/# both 1\ncleansession true\n"

    b2 = Broker(folder=tmp_path, port=p2, extra=bridged())
    b2.start()
    alice, _ = create_key_file(tmp_path / "keys" / "alice.key")
    bob, _ = create_key_file(tmp_path / "keys" / "bob.key")
    ops = [{"name": "alice", "key": alice.public_b64, "role": "operator"}, {"name": "bob", "key": bob.public_b64, "role": "admin"}]
    a, b, keys = _nodes(tmp_path, b1.port, ops, port_b=p2, digest_interval_s=0.5)
    side_a, side_b = _operator(tmp_path, b1.port, "laptop-a"), _operator(tmp_path, p2, "laptop-b")

    def set_on(laptop: Path, node: str, who: str, value: str) -> None:
        r = cli(laptop, "fleet", "set", "site/maintenance", value, "--target", node, "--key", str(tmp_path / "keys" / f"{who}.key"),
                "--peer-key", f"{node}={keys[node].public_b64}")
        assert r.returncode == 0, r.stdout + r.stderr

    try:
        for n in (a, b):
            n.start()
            wait_connected(n)
        set_on(side_a, "node-a", "alice", "true")  # joined: it crosses the bridge
        _wait(lambda: _state(b).get("site/maintenance", {}).get("value") is True)

        b2.stop()  # the partition: the b-side broker back without its bridge
        b2 = Broker(folder=tmp_path, port=p2, extra=queue)
        b2.start()
        for n in (a, b):
            wait_connected(n)
        for n, tag in ((a, "a"), (b, "b")):  # each node sets its own key (maintenance is still on: alert)
            rec = n.request({"op": "submit", "skill": "freezer_health", "data": NORMAL, "id": f"split-{tag}"})["result"]
            assert rec["guard"] == "maintenance"
        set_on(side_b, "node-b", "bob", '"b-side"')
        set_on(side_a, "node-a", "alice", '"a-side"')  # later: it wins, wherever it is seen first
        time.sleep(1.5)  # several digest rounds: nothing may cross while split
        assert _state(a)["site/maintenance"]["value"] == "a-side" and _state(b)["site/maintenance"]["value"] == "b-side"
        assert "nodes/node-b/alerting" not in _state(a) and "nodes/node-a/alerting" not in _state(b)

        b2.stop()  # the heal
        b2 = Broker(folder=tmp_path, port=p2, extra=bridged())
        b2.start()

        def agreed() -> bool:
            sa, sb = _state(a), _state(b)
            return sa == sb and {"nodes/node-a/alerting", "nodes/node-b/alerting"} <= set(sa)

        _wait(agreed, timeout=60)
        entry = _state(a)["site/maintenance"]
        assert (entry["value"], entry["writer"]) == ("a-side", "operator:alice")
        for n in (a, b):
            rec = n.request({"op": "submit", "skill": "freezer_health", "data": NORMAL, "id": "healed"})["result"]
            assert rec["guard"] is None  # "a-side" is not true: the maintenance guard reads the same value on both
    finally:
        a.stop()
        b.stop()
        b1.stop()
        b2.stop()


def test_labels_replicate_to_the_peers_through_the_fleet_state(tmp_path: Path, broker: Broker) -> None:
    a, b, _ = _nodes(tmp_path, broker.port, [])
    for n in (a, b):
        n.start()
        wait_connected(n)
    try:
        rec = a.request({"op": "submit", "skill": "freezer_health", "data": NORMAL, "id": "ev-label"})["result"]
        r = cli(a.config_path, "label", rec["id"], "defrost", "--by", "carol")
        assert r.returncode == 0, r.stdout + r.stderr
        key = f"nodes/node-a/labels/{rec['id']}"
        _wait(lambda: key in _state(b))
        entry = _state(b)[key]
        assert entry["writer"] == "node-a" and entry["live"] and entry["expires_at"]
        assert {k: entry["value"][k] for k in ("skill", "action", "source", "event_id")} == {
            "skill": "freezer_health", "action": "defrost", "source": "operator", "event_id": "ev-label"}
        assert entry["value"]["by"].startswith("carol via local:")  # the socket's uid beside the --by (issue 15)
        assert entry["value"]["inputs"] == rec["inputs"]
        # a corrected label replaces it everywhere (the same key, a later HLC)
        assert cli(a.config_path, "label", rec["id"], "alert", "--by", "dave").returncode == 0
        _wait(lambda: _state(b)[key]["value"]["action"] == "alert")
        for n in (a, b):
            assert cli(n.config_path, "audit", "verify").returncode == 0
    finally:
        a.stop()
        b.stop()
