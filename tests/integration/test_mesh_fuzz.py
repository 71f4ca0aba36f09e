"""Property-based payloads on every topic a node subscribes to: it refuses them and lives."""

from __future__ import annotations

import json
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.broker import Broker
from tests.integration.conftest import DaemonProc, freezer_config
from tests.integration.test_mesh_link import wait_connected

TOPICS = [
    "agentd/v1/it/nodes/it-node/events/freezer_health",
    "agentd/v1/it/nodes/it-node/events/nope",
    "agentd/v1/it/nodes/peer-x/decisions",
    "agentd/v1/it/nodes/peer-x/status",
    "agentd/v1/it/cmd/it-node",
    "agentd/v1/it/cmd/all",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=15,
)
envelope_like = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 2, "1"]), "kind": st.sampled_from(["decision", "status", "command", "x"]),
     "id": st.text(max_size=10), "node": st.sampled_from(["peer-x", "it-node", ""]),
     "hlc": st.sampled_from(["0000000000001-0000", "9999999999999-0000", "x"]), "body": json_values},
    optional={"sig": st.text(max_size=90)},
)
payloads = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | envelope_like.map(lambda v: json.dumps(v).encode())
    | st.fixed_dictionaries({"id": json_values, "data": json_values}).map(lambda v: json.dumps(v).encode())
)


@pytest.fixture
def running(tmp_path: Path, broker: Broker) -> DaemonProc:
    data = tmp_path / "data"
    data.mkdir()
    cfg = freezer_config(data, mqtt_port=broker.port)
    cfg["trust"] = {"allow_unknown_peers": True, "operators": []}
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    node = DaemonProc(config_path=path, data_dir=data)
    node.start()
    wait_connected(node)
    yield node
    node.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(st.sampled_from(TOPICS), payloads), min_size=1, max_size=6))
def test_arbitrary_payloads_on_every_subscribed_topic(running: DaemonProc, broker: Broker, batch: list[tuple[str, bytes]]) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    for name, payload in batch:
        pub.publish(name, payload, qos=1).wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()
    status = running.request({"op": "status"})  # answers after the batch: alive and serving
    assert status["ok"] and status["result"]["broker"]["connected"] is True
    assert running.proc is not None and running.proc.poll() is None
