"""Two nodes on one real broker: signed decisions gossiped into each other's fleet state."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from agentd.trust.envelope import envelope
from agentd.trust.keys import create_key
from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc, cli, freezer_config
from tests.integration.test_mesh_link import wait_connected

WARM = {"temperature_c": -8.0, "door_open_s": 0.0, "compressor_a": 5.0}


def _config(tmp_path: Path, name: str, port: int, trust: dict[str, Any]) -> DaemonProc:
    folder = tmp_path / name
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    cfg = freezer_config(data, mqtt_port=port, node_id=name)
    cfg["trust"] = trust
    path = folder / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return DaemonProc(config_path=path, data_dir=data)


def _wait(pred: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _fleet(node: DaemonProc) -> dict[str, Any]:
    return json.loads(cli(node.config_path, "fleet-state", "--json").stdout)["decisions"]


def test_configured_peers_see_each_others_decisions_and_forgeries_are_dropped(tmp_path: Path, broker: Broker) -> None:
    a_dir, b_dir = tmp_path / "node-a" / "data", tmp_path / "node-b" / "data"
    key_a, _ = create_key(a_dir)
    key_b, _ = create_key(b_dir)
    a = _config(tmp_path, "node-a", broker.port, {"peers": {"node-b": key_b.public_b64}})
    b = _config(tmp_path, "node-b", broker.port, {"peers": {"node-a": key_a.public_b64}})
    a.start()
    b.start()
    try:
        wait_connected(a)
        wait_connected(b)
        for i in range(5):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"w{i}"})["ok"]
        _wait(lambda: sum(_fleet(b).get("node-a", {}).values()) == 5)
        peers = {p["node"]: p for p in json.loads(cli(b.config_path, "peers", "--json").stdout)}
        assert peers["node-a"]["status"] == "online" and peers["node-a"]["decisions"] == 5

        # forged: a decision "from node-a" signed with another key; unsigned; garbage
        intruder, _ = create_key(tmp_path / "intruder")
        forged = envelope("decision", fleet="it", node="node-a", hlc=f"{time.time_ns() // 1_000_000:013d}-0000",
                          body={"id": "x", "action": "shutdown", "created_at": time.time()}, key=intruder)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for payload in (forged, b'{"v":2,"fleet":"it","kind":"decision","id":"y","node":"node-a","hlc":"0000000000001-0000","body":{}}', b"junk"):
            pub.publish("agentd/v1/it/nodes/node-a/decisions", payload, qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        _wait(lambda: sum(b.request({"op": "status"})["result"]["broker"]["rejected"].values()) >= 3)
        rejected = b.request({"op": "status"})["result"]["broker"]["rejected"]
        assert rejected.get("bad_signature") == 1 and rejected.get("unsigned") == 1 and rejected.get("not_json") == 1
        assert sum(_fleet(b).get("node-a", {}).values()) == 5  # the forgery changed nothing
        assert b.proc is not None and b.proc.poll() is None
        assert cli(b.config_path, "audit", "verify").returncode == 0
    finally:
        a.stop()
        b.stop()


def test_unknown_peers_are_refused_unless_trust_on_first_use_is_allowed(tmp_path: Path, broker: Broker) -> None:
    a = _config(tmp_path, "node-a", broker.port, {})
    strict = _config(tmp_path, "node-s", broker.port, {})
    tofu = _config(tmp_path, "node-t", broker.port, {"allow_unknown_peers": True})
    for n in (strict, tofu, a):
        n.start()
        wait_connected(n)
    try:
        assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": "t1"})["ok"]
        _wait(lambda: sum(_fleet(tofu).get("node-a", {}).values()) == 1)
        assert "node-a" not in _fleet(strict)
        assert strict.request({"op": "status"})["result"]["broker"]["rejected"].get("unknown_signer", 0) >= 1
        learned = {p["node"]: p for p in json.loads(cli(tofu.config_path, "peers", "--json").stdout)}
        assert learned["node-a"]["learned"] == 1
    finally:
        for n in (a, strict, tofu):
            n.stop()


def test_a_node_back_from_offline_catches_up_by_anti_entropy(tmp_path: Path) -> None:
    """The broker keeps only 3 messages for an offline node and drops the rest; digests repair the gap."""
    broker = Broker(folder=tmp_path, extra="max_queued_messages 3\n")
    broker.start()
    a_dir, b_dir = tmp_path / "node-a" / "data", tmp_path / "node-b" / "data"
    key_a, _ = create_key(a_dir)
    key_b, _ = create_key(b_dir)
    a = _config(tmp_path, "node-a", broker.port, {"peers": {"node-b": key_b.public_b64}})
    b = _config(tmp_path, "node-b", broker.port, {"peers": {"node-a": key_a.public_b64}})
    for node in (a, b):
        cfg = yaml.safe_load(node.config_path.read_text())
        cfg["mqtt"]["digest_interval_s"] = 0.5
        node.config_path.write_text(yaml.safe_dump(cfg))
    a.start()
    b.start()
    try:
        wait_connected(a)
        wait_connected(b)
        for i in range(3):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"before-{i}"})["ok"]
        _wait(lambda: sum(_fleet(b).get("node-a", {}).values()) == 3)
        b.stop()  # offline; its persistent session stays on the broker
        for i in range(30):
            assert a.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"while-{i}"})["ok"]
        b.start()
        wait_connected(b)
        _wait(lambda: sum(_fleet(b).get("node-a", {}).values()) == 33, timeout=60)
        assert a.request({"op": "status"})["result"]["broker"].get("resent", 0) > 0
        peers = {p["node"]: p for p in json.loads(cli(b.config_path, "peers", "--json").stdout)}
        assert peers["node-a"]["decisions"] == 33  # resends are not counted twice
    finally:
        a.stop()
        b.stop()
        broker.stop()


def test_trust_on_first_use_learns_at_most_max_learned_peers(tmp_path: Path, broker: Broker) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cfg = freezer_config(data, mqtt_port=broker.port)
    cfg["trust"] = {"allow_unknown_peers": True}
    cfg["mesh"] = {"max_learned_peers": 2}
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    node = DaemonProc(config_path=path, data_dir=data)
    node.start()
    wait_connected(node)
    try:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for i in range(5):  # five strangers, each offering its own key
            key, _ = create_key(tmp_path / f"ghost-{i}")
            status = envelope("status", fleet="it", node=f"ghost-{i}", hlc=f"{time.time_ns() // 1_000_000:013d}-0000",
                              body={"status": "online", "public_key": key.public_b64}, key=key)
            pub.publish(f"agentd/v1/it/nodes/ghost-{i}/status", status, qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        _wait(lambda: node.request({"op": "status"})["result"]["broker"]["refused"].get("peer.too_many_peers", 0) == 3)
        learned = [p for p in json.loads(cli(node.config_path, "peers", "--json").stdout) if p["learned"]]
        assert len(learned) == 2
    finally:
        node.stop()
