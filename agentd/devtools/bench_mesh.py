"""`agentd bench --only mqtt|convergence`: the mesh figures of DESIGN section 12.

- ``mqtt``: one rules-only `agentd run` child on a private Mosquitto (free loopback port,
  the peer bench's broker settings). Event published → signed decision received by a
  subscriber, one at a time (``mqtt_e2e_*``), beside two baselines on the same broker: one
  hop publish → subscribe (``mqtt_raw_hop_*``) and a trivial relay that answers each event
  with no decision at all (``mqtt_echo_*``, the same two hops agentd's path takes). Then a
  sustained run: events pipelined at QoS 1, every decision persisted, audited, signed and
  published; ``mqtt_throughput_eps`` counts decisions received by the subscriber and
  ``messages_lost`` the events whose decision never arrived (or is missing from the
  node's database).
- ``convergence``: 20 nodes on two loopback brokers, partitioned (not bridged), each
  deciding and writing fleet-state keys; then the heal (the second broker restarts bridged
  to the first); ``convergence_s`` runs from the heal until every node holds every node's
  decisions and the same winner of every key (``agentd.devtools.bench_fleet``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agentd.control.client import request
from agentd.devtools.broker import Broker, free_port
from agentd.errors import AgentdError
from agentd.stats import percentile

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig

FLEET = "bench"


@contextlib.contextmanager
def broker(folder: Path, port: int, extra: str = "") -> Iterator[Broker]:
    """A private Mosquitto on 127.0.0.1:port for the duration of the block (agentd.devtools.broker)."""
    with Broker(folder=folder, port=port, extra=f"max_queued_messages 100000\n{extra}") as b:
        yield b


def wait_connected(sock_path: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agentd exited {proc.returncode} during the bench")
        with contextlib.suppress(AgentdError, KeyError):
            status = request(sock_path, {"op": "status"})
            if status["broker"]["connected"]:
                return dict(status)
        time.sleep(0.05)
    raise RuntimeError(f"the node behind {sock_path} did not connect to the broker in {timeout} s")


def start_node(cfg: dict[str, Any], folder: Path) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agentd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = (folder / "daemon.log").open("ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "agentd.cli", "run", "--config", str(path)], stdout=log, stderr=log)
    finally:
        log.close()


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


class _Collector:
    """A paho subscriber: arrival time of the first decision for each event id."""

    def __init__(self, port: int, topics: list[str], *, key: str = "event_id") -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.arrived: dict[str, float] = {}
        self.duplicates = 0
        self.waiting: tuple[str, threading.Event] | None = None
        self._key = key
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        nodelay(self.client)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        if not subscribed.wait(10):
            raise RuntimeError("the bench's subscriber was not confirmed by the broker")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.perf_counter()
        try:
            doc = json.loads(msg.payload)
            body = doc.get("body", doc)
            ident = body[self._key] if isinstance(body, dict) else None
        except (ValueError, KeyError, AttributeError):
            return
        if not isinstance(ident, str):
            return
        if ident in self.arrived:
            self.duplicates += 1
            return
        self.arrived[ident] = now
        w = self.waiting
        if w is not None and w[0] == ident:
            w[1].set()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publisher(port: int, inflight: int = 1000) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{os.getpid()}-{time.monotonic_ns()}")
    pub.max_inflight_messages_set(inflight)
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", port)
    nodelay(pub)
    pub.loop_start()
    return pub


def nodelay(client: Any) -> None:
    """As agentd's own link does: no Nagle wait for the broker's delayed ACK."""
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _one_at_a_time(pub: Any, sub: _Collector, topic: str, payloads: list[tuple[str, bytes]], warmup: int) -> tuple[list[float], int]:
    """Publish each payload and wait for its answer; milliseconds per answer, and timeouts."""
    lat: list[float] = []
    timeouts = 0
    for i, (ident, payload) in enumerate(payloads):
        done = threading.Event()
        sub.waiting = (ident, done)
        t = time.perf_counter()
        pub.publish(topic, payload, qos=1)
        if not done.wait(2.0):
            timeouts += 1
            continue
        if i >= warmup:
            lat.append((sub.arrived[ident] - t) * 1000)
    sub.waiting = None
    return lat, timeouts


def _events(loaded: LoadedConfig, n: int, prefix: str) -> list[tuple[str, bytes]]:
    import random

    from agentd.daemon.sources import event_for
    from agentd.devtools.bench import bench_skill

    skill = bench_skill(loaded.config)
    rng = random.Random(7)
    return [(f"{prefix}-{i}", json.dumps({"id": f"{prefix}-{i}", "data": event_for(skill, rng)}).encode()) for i in range(n)]


def mqtt_part(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    """E2E latency with its baselines, then sustained throughput with loss counted."""
    from agentd.devtools.bench import bench_config

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    bl = bench_config(loaded, data_dir / "node", cascade=[])
    cfg = bl.config.model_dump(mode="json", exclude_none=True)
    node, skill = "bench-node", bl.config.skills[0].name
    cfg["node"]["id"], cfg["node"]["fleet"] = node, FLEET
    cfg["mqtt"].update({"enabled": True, "host": "127.0.0.1", "port": port})
    cfg["daemon"]["simulator"] = {"enabled": False}
    cfg["models"] = []  # rules only: no model runtime in the node
    cfg["daemon"]["max_pending"] = max(int(cfg["daemon"].get("max_pending", 10_000)), 10_000)
    root = f"agentd/v1/{FLEET}/nodes/{node}"
    events_topic, decisions_topic = f"{root}/events/{skill}", f"{root}/decisions"
    n_lat = max(200, min(samples // 4, 2000))
    n_tp = max(5000, samples * 10)
    out: dict[str, Any] = {}
    with broker(data_dir, port):
        out.update(_baselines(port, n_lat))
        proc = start_node(cfg, data_dir / "node")
        try:
            status = wait_connected(Path(bl.config.socket_path), proc)
            out["mqtt_protocol"] = status["broker"].get("protocol")
            sub = _Collector(port, [decisions_topic])
            pub = publisher(port)
            try:
                lat, timeouts = _one_at_a_time(pub, sub, events_topic, _events(loaded, n_lat + 20, "lat"), warmup=20)
                out.update({
                    "mqtt_e2e_p50_ms": round(percentile(lat, 50), 3), "mqtt_e2e_p99_ms": round(percentile(lat, 99), 3),
                    "mqtt_e2e_samples": len(lat), "mqtt_e2e_timeouts": timeouts,
                })
                out.update(_throughput(pub, sub, events_topic, _events(loaded, n_tp, "tp")))
            finally:
                pub.loop_stop()
                pub.disconnect()
                sub.close()
        finally:
            stop_all([proc])
    out.update(_check_store(bl.config.data_dir, [f"tp-{i}" for i in range(n_tp)]))
    out["messages_lost"] = out.pop("_not_received") + out["mqtt_not_persisted"]
    return out


def _throughput(pub: Any, sub: _Collector, topic: str, events: list[tuple[str, bytes]], grace_s: float = 30.0) -> dict[str, Any]:
    t0 = time.perf_counter()
    infos = [pub.publish(topic, payload, qos=1) for _, payload in events]
    for info in infos:
        info.wait_for_publish(60)
    sent = time.perf_counter()
    want = {ident for ident, _ in events}
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and not want <= sub.arrived.keys():
        time.sleep(0.01)
    got = [sub.arrived[i] for i in want if i in sub.arrived]
    last = max(got) if got else sent
    return {
        "mqtt_throughput_eps": round(len(got) / (last - t0), 1),
        "mqtt_throughput_events": len(events),
        "mqtt_throughput_send_eps": round(len(events) / (sent - t0), 1),
        "mqtt_duplicates": sub.duplicates,
        "_not_received": len(want) - len(got),
    }


def _check_store(data_dir: Path, ids: list[str]) -> dict[str, Any]:
    """After the node stopped: every event has one decision, audited; the outbox drained; the chain verifies."""
    from agentd.state import queries

    conn = sqlite3.connect(f"file:{queries.db_path(data_dir)}?mode=ro", uri=True)
    try:
        have = {r[0] for r in conn.execute("SELECT event_id FROM decisions WHERE event_id LIKE 'tp-%'")}
        audited = conn.execute(
            "SELECT COUNT(*) FROM decisions d JOIN audit a ON a.kind = 'decision' AND a.ref = d.id WHERE d.event_id LIKE 'tp-%'"
        ).fetchone()[0]
        outbox = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        verified = queries.verify_audit(conn).ok
    finally:
        conn.close()
    return {
        "mqtt_not_persisted": sum(1 for i in ids if i not in have),
        "mqtt_audited": audited,
        "mqtt_outbox_left": outbox,
        "mqtt_audit_verified": verified,
    }


def _baselines(port: int, n: int) -> dict[str, Any]:
    """Same broker, no agentd: one hop (publish → subscriber) and a trivial relay (two hops)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    sub = _Collector(port, ["bench/raw", "bench/echo/out"], key="id")
    pub = publisher(port)
    relay = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-relay-{os.getpid()}")

    def relay_once(c: Any, _u: Any, m: Any) -> None:
        c.publish("bench/echo/out", m.payload, qos=1)

    relay.on_message = relay_once
    subscribed = threading.Event()
    relay.on_subscribe = lambda *_a: subscribed.set()
    relay.connect("127.0.0.1", port)
    nodelay(relay)
    relay.loop_start()
    relay.subscribe("bench/echo/in", qos=1)
    subscribed.wait(10)
    try:
        raw, _ = _one_at_a_time(pub, sub, "bench/raw", [(f"r{i}", json.dumps({"id": f"r{i}"}).encode()) for i in range(n + 20)], 20)
        echo, _ = _one_at_a_time(pub, sub, "bench/echo/in", [(f"e{i}", json.dumps({"id": f"e{i}"}).encode()) for i in range(n + 20)], 20)
    finally:
        for c in (relay, pub):
            c.loop_stop()
            c.disconnect()
        sub.close()
    return {
        "mqtt_raw_hop_p50_ms": round(percentile(raw, 50), 3), "mqtt_raw_hop_p99_ms": round(percentile(raw, 99), 3),
        "mqtt_echo_p50_ms": round(percentile(echo, 50), 3), "mqtt_echo_p99_ms": round(percentile(echo, 99), 3),
    }


def convergence_part(loaded: LoadedConfig, data_dir: Path, samples: int, *, nodes: int = 20, events: int = 10) -> dict[str, Any]:
    """20 nodes, two brokers, partitioned then healed: seconds until every node holds every decision and key."""
    del loaded, samples  # the fleet is synthetic: one rules-only skill per node
    return convergence(data_dir, nodes=nodes, events=events)


def convergence(root: Path | None = None, **kw: Any) -> dict[str, Any]:
    """The convergence run (``agentd.devtools.bench_fleet``; also `scripts/bench_convergence.py`)."""
    from agentd.devtools.bench_fleet import convergence as run

    return run(root, **kw)
