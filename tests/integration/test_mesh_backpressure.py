"""A flood of MQTT events against a real Mosquitto: the node holds a bounded number, and keeps publishing."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc, freezer_config
from tests.integration.test_mesh_link import wait_connected
from tests.integration.test_mesh_protocol import _publish, _wait_decided

DECISIONS = "agentd/v1/it/nodes/it-node/decisions"


def test_a_flood_is_read_in_bounded_steps_and_every_decision_goes_out(tmp_path: Path, broker: Broker) -> None:
    # mosquitto 2.0.11 sends a client past its Receive Maximum once acknowledgements flow, so the
    # node bounds what it holds by pausing its socket; its decisions go out on a second
    # connection, whose PUBACKs do not wait behind the events queued for the first.
    data = tmp_path / "data"
    data.mkdir()
    cfg = freezer_config(data, mqtt_port=broker.port)
    cfg["skills"][0]["cascade"] = []  # rules only: the test is about the link
    cfg["mqtt"]["receive_maximum"] = 50
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    node = DaemonProc(config_path=path, data_dir=data)
    received: dict[str, int] = {}
    lock = threading.Lock()

    def on_message(c: Any, u: Any, m: Any) -> None:
        with lock:
            eid = json.loads(m.payload)["body"]["event_id"]
            received[eid] = received.get(eid, 0) + 1

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood-sub")
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe(DECISIONS, qos=1)
    sub.loop_start()
    node.start()
    try:
        wait_connected(node)
        ids = [f"flood-{i}" for i in range(3000)]
        _publish(broker.port, ids)  # as fast as the broker takes them
        got = _wait_decided(node, ids, timeout=120)
        assert all(got[i] == 1 for i in ids), "an event was decided twice"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if all(i in received for i in ids):
                    break
            time.sleep(0.1)
        with lock:
            missing = [i for i in ids if i not in received]
        assert not missing, f"{len(missing)} decisions never reached the subscriber, e.g. {missing[:3]}"
        status = node.request({"op": "status"})["result"]
        assert status["broker"]["read_pauses"] >= 1, "the flood never filled the node's 50 events in hand"
        assert status["broker"]["reconnects"] == 0, "the session was lost under the flood"
        assert status["broker"]["events_in"] == len(ids)
    finally:
        node.stop()
        sub.loop_stop()
        sub.disconnect()
