"""A network partition between two groups of nodes, then the heal (DESIGN section 13).

Two real Mosquitto brokers, two nodes on each. Bridged, the fleet is one; the second
broker restarted without its bridge is the partition; restarted with the bridge again is
the heal. Both sides decide throughout. After the heal every node must hold every
node's decisions in its fleet state, each once, with nothing lost from any node's own
record, and every audit chain must verify.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import yaml

from agentd.trust.keys import create_key
from tests.integration.broker import Broker, free_port
from tests.integration.conftest import DaemonProc, cli, freezer_config
from tests.integration.test_mesh_link import wait_connected

WARM = {"temperature_c": -8.0, "door_open_s": 0.0, "compressor_a": 5.0}  # alert, no approval
NAMES = ["a1", "a2", "b1", "b2"]
QUEUE = "max_queued_messages 100000\n"


def _bridge(port: int) -> str:
    return QUEUE + f"connection heal\naddress 127.0.0.1:{port}\ntopic agentd/v1/# both 1\ncleansession true\n"


def _ro(node: DaemonProc) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{node.data_dir / 'agentd.db'}?mode=ro", uri=True, timeout=10)


def _own(node: DaemonProc) -> set[str]:
    with _ro(node) as c:
        return {r[0] for r in c.execute("SELECT id FROM decisions")}


def _fleet(node: DaemonProc) -> dict[str, set[str]]:
    with _ro(node) as c:
        out: dict[str, set[str]] = {}
        for origin, did in c.execute("SELECT node, decision_id FROM fleet_decisions"):
            out.setdefault(origin, set()).add(did)
        return out


def _decide(nodes: dict[str, DaemonProc], tag: str, n: int) -> None:
    for name, node in nodes.items():
        for i in range(n):
            r = node.request({"op": "submit", "skill": "freezer_health", "data": WARM, "id": f"{name}-{tag}-{i}"})
            assert r["ok"], r


def _wait(pred: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout} s: {what}")


def test_partitioned_groups_converge_after_the_heal(tmp_path: Path) -> None:
    b1 = Broker(folder=tmp_path, extra=QUEUE)
    b1.start()
    p2 = free_port()
    b2 = Broker(folder=tmp_path, port=p2, extra=_bridge(b1.port))
    b2.start()
    keys = {n: create_key(tmp_path / n / "data")[0].public_b64 for n in NAMES}
    nodes: dict[str, DaemonProc] = {}
    for n in NAMES:
        data = tmp_path / n / "data"
        cfg = freezer_config(data, mqtt_port=b1.port if n.startswith("a") else p2, node_id=n)
        cfg["skills"][0]["cascade"] = []
        cfg["mqtt"]["digest_interval_s"] = 0.5
        cfg["trust"] = {"peers": {m: k for m, k in keys.items() if m != n}}
        path = tmp_path / n / "agentd.yaml"
        path.write_text(yaml.safe_dump(cfg))
        nodes[n] = DaemonProc(config_path=path, data_dir=data)
    try:
        for node in nodes.values():
            node.start()
            wait_connected(node)
        # one fleet: decisions cross the bridge
        _decide(nodes, "joined", 3)
        _wait(lambda: all(len(_fleet(nodes[n]).get(m, ())) == 3 for n in NAMES for m in NAMES), "the bridged fleet agrees")

        b2.stop()  # partition: the b-side broker comes back without its bridge
        b2 = Broker(folder=tmp_path, port=p2, extra=QUEUE)
        b2.start()
        for node in nodes.values():
            wait_connected(node)
        _decide(nodes, "split", 8)
        side = {"a": ["a1", "a2"], "b": ["b1", "b2"]}
        _wait(lambda: all(len(_fleet(nodes[n]).get(m, ())) == 11 for s in side.values() for n in s for m in s),
              "each side agrees within itself")
        time.sleep(1.5)  # several digest rounds: nothing may cross while split
        for n in side["a"]:
            assert all(len(_fleet(nodes[n])[m]) == 3 for m in side["b"]), "a decision crossed the partition"
        for n in side["b"]:
            assert all(len(_fleet(nodes[n])[m]) == 3 for m in side["a"]), "a decision crossed the partition"

        b2.stop()  # heal
        b2 = Broker(folder=tmp_path, port=p2, extra=_bridge(b1.port))
        b2.start()
        _decide({"a1": nodes["a1"], "b2": nodes["b2"]}, "healing", 2)  # and decisions go on meanwhile
        truth = {n: _own(node) for n, node in nodes.items()}
        assert {n: len(ids) for n, ids in truth.items()} == {"a1": 13, "a2": 11, "b1": 11, "b2": 13}
        _wait(lambda: all(_fleet(nodes[n]) == truth for n in NAMES), "every node holds every node's decisions")
    finally:
        for node in nodes.values():
            node.stop()
        b1.stop()
        b2.stop()

    for n, node in nodes.items():
        assert _fleet(node) == truth, n  # exactly the decisions that were made: nothing lost, nothing extra
        peers = {p["node"]: p for p in json.loads(cli(node.config_path, "peers", "--json").stdout)}
        assert {m: peers[m]["decisions"] for m in NAMES if m != n} == {m: len(truth[m]) for m in NAMES if m != n}, n
        with _ro(node) as c:
            assert c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0, n
            assert c.execute("SELECT COUNT(*), COUNT(DISTINCT event_id) FROM decisions").fetchone() == (len(truth[n]),) * 2
        r = cli(node.config_path, "audit", "verify")
        assert r.returncode == 0, r.stdout + r.stderr
