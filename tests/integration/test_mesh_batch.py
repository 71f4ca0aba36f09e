"""Batches on a real broker (issue 16, part 4): a node takes a peer's signed batch item by item; a
tampered batch, an oversize one and a bad item are refused and counted, and the node carries on."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agentd.trust.batch import MAX_ITEMS, batch_envelope, item_bytes
from agentd.trust.canonical import canonical
from agentd.trust.hlc import Clock
from agentd.trust.keys import create_key
from tests.integration.broker import Broker
from tests.integration.conftest import cli
from tests.integration.test_mesh_link import wait_connected
from tests.integration.test_mesh_peers import _config, _fleet, _wait

TOPIC = "agentd/v1/it/gossip/node-b"


def _decision(i: int, tag: str) -> bytes:
    body = {"id": f"{tag}-{i}", "action": "alert", "skill": "freezer_health", "created_at": time.time()}
    return item_bytes("decision", f"{tag}-{i}", Clock().now(), canonical(body))


def _publish(port: int, payloads: list[bytes]) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for p in payloads:
        pub.publish(TOPIC, p, qos=1).wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()


def test_a_peers_batch_is_taken_item_by_item_and_bad_ones_are_refused_and_counted(tmp_path: Path, broker: Broker) -> None:
    key_b, _ = create_key(tmp_path / "node-b-keys")
    a = _config(tmp_path, "node-a", broker.port, {"peers": {"node-b": key_b.public_b64}})
    a.start()
    try:
        wait_connected(a)
        clock = Clock()
        good = batch_envelope([_decision(i, "ok") for i in range(3)], fleet="it", node="node-b", hlc=clock.now(), key=key_b)
        tampered = batch_envelope([_decision(i, "tp") for i in range(3)], fleet="it", node="node-b", hlc=clock.now(),
                                  key=key_b).replace(b'"id":"tp-1"', b'"id":"tp-9"')
        too_many = batch_envelope([_decision(i, "big") for i in range(MAX_ITEMS + 1)], fleet="it", node="node-b", hlc=clock.now(),
                                  key=key_b)  # under 64 KiB: refused for its count
        bad_item = b'{"body":{"id":"nope"},"hlc":"' + clock.now().encode() + b'","id":"nope","kind":"decision"}'  # no action
        mixed = batch_envelope([_decision(0, "mix"), bad_item], fleet="it", node="node-b", hlc=clock.now(), key=key_b)
        assert len(too_many) < 65536
        _publish(broker.port, [good, tampered, too_many, mixed, good])
        _wait(lambda: sum(_fleet(a).get("node-b", {}).values()) == 4)

        def refused() -> dict[str, Any]:
            return a.request({"op": "status"})["result"]["broker"]["rejected"]  # type: ignore[no-any-return]

        _wait(lambda: refused().get("oversized") == 1 and refused().get("malformed") == 1)
        counts = refused()
        assert counts.get("bad_signature") == 1 and counts.get("oversized") == 1 and counts.get("malformed") == 1
        assert counts.get("duplicate") == 3  # the good batch again: each item a repeat
        held = json.loads(cli(a.config_path, "fleet-state", "--json").stdout)["decisions"]["node-b"]
        assert held == {"alert": 4}  # ok-0..2 and mix-0: nothing of the tampered or the oversize batch
        assert a.proc is not None and a.proc.poll() is None
        assert cli(a.config_path, "audit", "verify").returncode == 0
    finally:
        a.stop()

