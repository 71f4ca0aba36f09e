"""MQTT 5 where the broker has it, 3.1.1 otherwise (DESIGN section 6), against a real Mosquitto.

Under both protocols the node keeps a persistent session and acknowledges an event only
after its decision is committed: events published while it is down, and events it held
unacknowledged when it was SIGKILLed, are decided after its restart, each exactly once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml

from tests.integration.broker import Broker, V311OnlyProxy
from tests.integration.conftest import DaemonProc, cli, freezer_config
from tests.integration.test_mesh_link import wait_connected

EVENT = {"temperature_c": -19.0, "door_open_s": 3.0, "compressor_a": 5.2}
EVENTS = "agentd/v1/it/nodes/it-node/events/freezer_health"


def _node(tmp_path: Path, port: int, protocol: str | None) -> DaemonProc:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    cfg = freezer_config(data, mqtt_port=port)
    cfg["skills"][0]["cascade"] = []  # rules only: the test is about the link
    if protocol is not None:
        cfg["mqtt"]["protocol"] = protocol
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return DaemonProc(config_path=path, data_dir=data)


def _publish(port: int, ids: list[str]) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(EVENTS, json.dumps({"id": i, "data": EVENT}), qos=1) for i in ids]
    for info in infos:
        info.wait_for_publish(30)
    pub.loop_stop()
    pub.disconnect()


def _decided(node: DaemonProc) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{node.data_dir / 'agentd.db'}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT event_id, COUNT(*) FROM decisions GROUP BY event_id").fetchall())
    finally:
        conn.close()


def _wait_decided(node: DaemonProc, ids: list[str], timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = _decided(node)
        if all(i in got for i in ids):
            return got
        time.sleep(0.1)
    missing = [i for i in ids if i not in _decided(node)]
    raise AssertionError(f"{len(missing)} of {len(ids)} events not decided, e.g. {missing[:5]}")


@pytest.mark.parametrize(("setting", "expected"), [(None, "5"), ("5", "5"), ("3.1.1", "3.1.1")])
def test_persistent_session_and_acks_after_commit(tmp_path: Path, broker: Broker, setting: str | None, expected: str) -> None:
    node = _node(tmp_path, broker.port, setting)
    node.start()
    try:
        wait_connected(node)
        assert node.request({"op": "status"})["result"]["broker"]["protocol"] == expected
        # mosquitto logs the protocol of each connection: p5 is MQTT 5, p2 is 3.1.1
        log = (broker.folder / f"mosquitto-{broker.port}.log").read_text()
        assert f"as agentd-it-it-node ({'p5' if expected == '5' else 'p2'}," in log
        assert "as agentd-it-it-node-out (p2," in log  # the publishing connection: always 3.1.1
        node.stop()  # the session stays on the broker; events for the node queue there
        offline = [f"off-{i}" for i in range(40)]
        _publish(broker.port, offline)
        node.start()
        _wait_decided(node, offline)

        # SIGKILL while events stream in: the unacknowledged ones come again after the restart
        loaded = [f"load-{i}" for i in range(3000)]
        publisher = threading.Thread(target=_publish, args=(broker.port, loaded))
        publisher.start()
        deadline = time.monotonic() + 60
        while len(_decided(node)) < len(offline) + 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        node.kill()
        at_kill = len(_decided(node)) - len(offline)
        publisher.join(60)
        assert 0 < at_kill < len(loaded), "the kill did not land mid-stream"
        node.start()
        wait_connected(node)
        assert node.request({"op": "status"})["result"]["broker"]["protocol"] == expected
        got = _wait_decided(node, offline + loaded)
        assert all(n == 1 for n in got.values()), "an event was decided twice"
    finally:
        node.stop()
    r = cli(node.config_path, "audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def test_auto_falls_back_to_311_when_the_broker_refuses_5(tmp_path: Path, broker: Broker) -> None:
    proxy = V311OnlyProxy(broker.port)
    node = _node(tmp_path, proxy.port, "auto")
    node.start()
    try:
        wait_connected(node)
        assert proxy.refused >= 1
        assert node.request({"op": "status"})["result"]["broker"]["protocol"] == "3.1.1"
        _publish(broker.port, ["via-311"])  # straight to the broker; the node reads through the proxy
        _wait_decided(node, ["via-311"])
        assert "refused MQTT 5" in node.log() and "with MQTT 3.1.1" in node.log()
    finally:
        node.stop()
        proxy.close()


def test_protocol_5_does_not_fall_back(tmp_path: Path, broker: Broker) -> None:
    proxy = V311OnlyProxy(broker.port)
    node = _node(tmp_path, proxy.port, "5")
    node.start()
    try:
        deadline = time.monotonic() + 10
        while proxy.refused < 2 and time.monotonic() < deadline:  # it retries with back-off, with 5 each time
            time.sleep(0.1)
        assert proxy.refused >= 2
        status = node.request({"op": "status"})["result"]["broker"]
        assert status["connected"] is False and status["protocol"] is None
        assert node.request({"op": "submit", "skill": "freezer_health", "data": EVENT, "id": "offline-1"})["ok"]
    finally:
        node.stop()
        proxy.close()
