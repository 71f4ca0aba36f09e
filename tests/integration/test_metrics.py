"""Metrics of a running node: Prometheus exposition scraped over HTTP and parsed with
prometheus_client's own parser, and the signed snapshot received from a real Mosquitto."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agentd.errors import Rejected
from agentd.trust.envelope import check_envelope
from tests.integration.broker import Broker, free_port
from tests.integration.conftest import DaemonProc, cli, freezer_config
from tests.integration.test_mesh_link import wait_connected

NORMAL = {"temperature_c": -19.0, "door_open_s": 3.0, "compressor_a": 5.2}
METRICS_TOPIC = "agentd/v1/it/nodes/it-node/metrics"


@pytest.fixture
def node(tmp_path: Path, broker: Broker) -> Iterator[tuple[DaemonProc, int]]:
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    cfg = freezer_config(data, mqtt_port=broker.port)
    cfg["metrics"] = {"enabled": True, "port": port, "mqtt_interval_s": 1}
    path = tmp_path / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    d = DaemonProc(config_path=path, data_dir=data)
    d.start()
    wait_connected(d)
    yield d, port
    d.stop()


def _scrape(port: int) -> dict[str, list[Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(s)
    return samples


def _value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    matching = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    return float(sum(matching))


def _submit(d: DaemonProc, skill: str, data: dict[str, Any], event_id: str) -> dict[str, Any]:
    reply = d.request({"op": "submit", "skill": skill, "data": data, "id": event_id})
    assert reply["ok"], reply
    return dict(reply["result"])


def test_prometheus_exposition_counts_what_the_node_decided(node: tuple[DaemonProc, int]) -> None:
    d, port = node
    before = _scrape(port)
    assert _value(before, "agentd_decisions_total") == 0
    records = [_submit(d, "freezer_health", NORMAL, f"m-{i}") for i in range(4)]
    _submit(d, "freezer_health", NORMAL, "m-0")  # a repeated id is not a second decision
    for i in range(3):  # the slow model times out three times: its circuit opens
        _submit(d, "slow_skill", {"x": 1}, f"s-{i}")
    from_model = sum(1 for r in records if r["source"] == "model")

    s = _scrape(port)
    lc = {"stage": "canary", "release": "it-1"}
    assert _value(s, "agentd_decisions_total") == 7
    assert _value(s, "agentd_decisions_total", skill="freezer_health", source="model", fallback_reason="", **lc) == from_model
    assert _value(s, "agentd_decisions_total", skill="slow_skill", source="rules", fallback_reason="timeout", **lc) == 3
    assert _value(s, "agentd_decision_latency_seconds_count", skill="freezer_health", **lc) == 4
    assert _value(s, "agentd_decision_latency_seconds_count", skill="slow_skill", **lc) == 3
    assert _value(s, "agentd_model_latency_seconds_count", model="freezer_anomaly", version="1", **lc) == 4
    assert _value(s, "agentd_model_latency_seconds_count", model="slow", **lc) == 3
    assert _value(s, "agentd_circuit_state", model="slow", state="open", **lc) == 1
    assert _value(s, "agentd_circuit_state", model="slow", state="closed") == 0
    assert _value(s, "agentd_circuit_state", model="freezer_anomaly", state="closed", **lc) == 1
    assert _value(s, "agentd_stage_acting", skill="freezer_health", index="0", model="freezer_anomaly", **lc) == 1
    assert _value(s, "agentd_broker_connected", **lc) == 1
    assert _value(s, "agentd_peers_online", **lc) == 0
    assert _value(s, "agentd_fleet_state_keys", **lc) == 0
    assert _value(s, "agentd_peers_audit_flagged", **lc) == 0
    assert _value(s, "agentd_node_info", node="it-node", fleet="it", **lc) == 1
    conn = sqlite3.connect(f"file:{d.data_dir / 'agentd.db'}?mode=ro", uri=True)
    head = conn.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
    depth = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    conn.close()
    assert _value(s, "agentd_audit_chain_length", **lc) == head
    assert _value(s, "agentd_outbox_depth", **lc) >= depth  # it only drains between the scrape and this read


def _public_key(config: Path) -> str:
    return str(json.loads(cli(config, "keys", "show", "--json").stdout)["public_key"])


def test_the_mqtt_snapshot_is_signed_and_matches(node: tuple[DaemonProc, int], broker: Broker) -> None:
    d, _ = node
    got: list[bytes] = []
    lock = threading.Lock()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        with lock:
            got.append(bytes(msg.payload))

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"metrics-sub-{time.monotonic_ns()}")
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe(METRICS_TOPIC, qos=0)
    sub.loop_start()
    try:
        for i in range(3):
            _submit(d, "freezer_health", NORMAL, f"q-{i}")
        key = _public_key(d.config_path)
        deadline = time.monotonic() + 30
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with lock:
                payloads = list(got)
            if payloads:
                env = check_envelope(payloads[-1], fleet="it", max_bytes=65536, key_for=lambda node, _e: key if node == "it-node" else None,
                                     now_ms=time.time_ns() // 1_000_000, max_skew_ms=60_000)
                body = env["body"]
                total = sum(v for _labels, v in body["metrics"].get("agentd_decisions_total", []))
                if total == 3:
                    break
            time.sleep(0.1)
        assert env["kind"] == "metrics" and env["node"] == "it-node"
        assert body["lifecycle"] == {"stage": "canary", "release": "it-1"}
        decisions = body["metrics"]["agentd_decisions_total"]
        assert sum(v for _l, v in decisions) == 3
        assert all(labels["stage"] == "canary" and labels["release"] == "it-1" for labels, _v in decisions)
        assert body["metrics"]["agentd_broker_connected"] == [[{"stage": "canary", "release": "it-1"}, 1.0]]
        assert not any(name.endswith("_bucket") for name in body["metrics"])
        # a forged copy does not verify
        tampered = payloads[-1].replace(b'"kind":"metrics"', b'"kind":"metricz"')
        with pytest.raises(Rejected) as refused:
            check_envelope(tampered, fleet="it", max_bytes=65536, key_for=lambda _n, _e: key, now_ms=time.time_ns() // 1_000_000, max_skew_ms=60_000)
        assert refused.value.reason == "bad_signature"
    finally:
        sub.loop_stop()
        sub.disconnect()
