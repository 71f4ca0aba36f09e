"""The node's MQTT link against a real Mosquitto: events in, signed decisions out, outages."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from agentd.trust.canonical import canonical
from agentd.trust.keys import verify
from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc, cli, freezer_config

EVENT = {"temperature_c": -19.0, "door_open_s": 3.0, "compressor_a": 5.2}
ROOT = "agentd/v1/it/nodes/it-node"


class Subscriber:
    """A plain paho client collecting every message under the node's topics."""

    def __init__(self, port: int, client_id: str | None = None) -> None:
        """``client_id``: a persistent session (clean_session false) under that id, else a fresh one."""
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-sub-{port}-{time.monotonic_ns()}",
                                  clean_session=client_id is None)
        self.client.on_message = lambda c, u, m: self._add(m.topic, m.payload)
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{ROOT}/#", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _add(self, name: str, payload: bytes) -> None:
        with self.lock:
            self.messages.append((name, payload))

    def decisions(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(p) for t, p in self.messages if t == f"{ROOT}/decisions"]

    def wait(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = {d["id"]: d for d in self.decisions()}
            if len(got) >= n:
                return list(got.values())
            time.sleep(0.05)
        raise AssertionError(f"only {len({d['id'] for d in self.decisions()})} of {n} decisions arrived")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _node(tmp_path: Path, port: int) -> DaemonProc:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    cfg = tmp_path / "agentd.yaml"
    cfg.write_text(yaml.safe_dump(freezer_config(data, mqtt_port=port)))
    d = DaemonProc(config_path=cfg, data_dir=data)
    d.start()
    wait_connected(d)
    return d


def wait_connected(node: DaemonProc, timeout: float = 30) -> None:
    """Until the node's MQTT session is up (it subscribed to its event topics)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.request({"op": "status"})["result"]["broker"]["connected"]:
            return
        time.sleep(0.05)
    raise AssertionError("the node did not connect to the broker")


def _public_key(config: Path) -> str:
    return json.loads(cli(config, "keys", "show", "--json").stdout)["public_key"]


def _signed_by(envelope: dict[str, Any], key: str) -> bool:
    body = {k: v for k, v in envelope.items() if k != "sig"}
    return verify(key, canonical(body), envelope["sig"])


def test_mosquitto_pub_event_gets_a_signed_decision(tmp_path: Path, broker: Broker) -> None:
    sub = Subscriber(broker.port)
    node = _node(tmp_path, broker.port)
    try:
        payload = json.dumps({"id": "pub-1", "data": EVENT})
        subprocess.run(
            ["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-t", f"{ROOT}/events/freezer_health", "-m", payload],
            check=True, timeout=30,
        )
        [env] = sub.wait(1)
        key = _public_key(node.config_path)
        assert env["v"] == 2 and env["fleet"] == "it" and env["kind"] == "decision" and env["node"] == "it-node"
        assert _signed_by(env, key)
        assert env["body"]["event_id"] == "pub-1" and env["body"]["origin"] == "mqtt"
        with sub.lock:
            statuses = [json.loads(p) for t, p in sub.messages if t == f"{ROOT}/status"]
        assert statuses and statuses[-1]["body"]["status"] == "online" and _signed_by(statuses[-1], key)
        # mosquitto_sub as an operator would use it: the retained birth status is there
        out = subprocess.run(
            ["mosquitto_sub", "-p", str(broker.port), "-t", f"{ROOT}/status", "-C", "1", "-W", "5"],
            capture_output=True, text=True, timeout=30, check=True,
        )
        assert json.loads(out.stdout)["body"]["status"] == "online"
    finally:
        node.stop()
        sub.close()


def test_bad_event_payloads_are_refused_and_the_node_lives(tmp_path: Path, broker: Broker) -> None:
    sub = Subscriber(broker.port)
    node = _node(tmp_path, broker.port)
    try:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        bad = [b"", b"not json", b"[1]", b'{"data": 5}', b'{"id": 7, "data": {}}', b'{"data": {"temperature_c": "x"}}',
               b'{"extra": 1, "data": {}}', b"x" * 70_000, json.dumps({"data": EVENT}).encode()]
        for p in bad:
            pub.publish(f"{ROOT}/events/freezer_health", p, qos=1).wait_for_publish(10)
        pub.publish(f"{ROOT}/events/no_such_skill", json.dumps({"data": EVENT}), qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        sub.wait(1)  # only the one good event was decided
        time.sleep(0.5)
        assert len({d["id"] for d in sub.decisions()}) == 1
        status = json.loads(cli(node.config_path, "status", "--json").stdout)
        assert status["broker"]["connected"] is True
        assert status["broker"]["events_refused"] == len(bad) - 1 + 1
    finally:
        node.stop()
        sub.close()


def test_broker_down_node_decides_on_and_delivers_everything_after(tmp_path: Path) -> None:
    # The subscriber's session (and its subscription) is persisted by the broker, so a node that
    # reconnects before the test's subscriber does still delivers to it: no race on who is first.
    # Mosquitto started as root drops to its own user, which cannot write under pytest's 0700 tmp
    # folder: as root (CI) it persisted nothing, and the test then depended on winning the race.
    (tmp_path / "mq").mkdir()
    stay_root = "user root\n" if os.geteuid() == 0 else ""
    broker = Broker(folder=tmp_path, extra=f"persistence true\npersistence_location {tmp_path / 'mq'}/\nautosave_interval 1\n{stay_root}").start()
    sub = Subscriber(broker.port, client_id="test-sub-persistent")
    node = _node(tmp_path, broker.port)
    try:
        for i in range(20):
            assert node.request({"op": "submit", "skill": "freezer_health", "data": EVENT, "id": f"a-{i}"})["ok"]
        sub.wait(20)
        sub.close()
        deadline = time.monotonic() + 10
        while not (tmp_path / "mq" / "mosquitto.db").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the autosave that holds the subscriber's session
        assert (tmp_path / "mq" / "mosquitto.db").exists(), "the broker persisted nothing; see its log"
        time.sleep(1.5)
        broker.stop()  # killed mid-stream
        for i in range(30):  # offline first: the node keeps deciding
            assert node.request({"op": "submit", "skill": "freezer_health", "data": EVENT, "id": f"b-{i}"})["ok"]
        depth = json.loads(cli(node.config_path, "status", "--json").stdout)["outbox_depth"]
        assert depth >= 30
        broker.start()  # same port, same persisted sessions
        sub = Subscriber(broker.port, client_id="test-sub-persistent")
        got = sub.wait(30, timeout=60)  # the node reconnects with back-off and drains its outbox
        events = [d["body"]["event_id"] for d in got]
        assert sorted(e for e in events if e.startswith("b-")) == sorted(f"b-{i}" for i in range(30))
        deadline = time.monotonic() + 20
        while json.loads(cli(node.config_path, "status", "--json").stdout)["outbox_depth"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert json.loads(cli(node.config_path, "status", "--json").stdout)["outbox_depth"] == 0
        # nothing duplicated: one decision per event id, whatever was re-sent on the wire
        per_event: dict[str, set[str]] = {}
        for d in sub.decisions():
            per_event.setdefault(d["body"]["event_id"], set()).add(d["id"])
        assert all(len(ids) == 1 for ids in per_event.values())
    finally:
        node.stop()
        sub.close()
        broker.stop()
