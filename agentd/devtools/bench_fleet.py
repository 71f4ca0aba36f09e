"""The fleet convergence run of `agentd bench --only convergence` and scripts/bench_convergence.py.

N nodes (``agentd run`` children) on two loopback brokers, half on each, not bridged (the
partition). Each node decides ``events`` events; its alerts set its own fleet-state key
``nodes/<id>/alerting`` (a skill's ``fleet_state:``), and an operator writes the site key
``site/mode`` on both sides (one signed ``fleet_set`` per broker, side B's later). Once each
side agrees within itself the second broker restarts bridged to the first (the heal):

- ``convergence_s``: from the heal until every node holds every node's decisions *and* the
  same winner of every state key (``convergence_decisions_s``, ``convergence_state_s``: each
  part alone);
- ``digest_interval_s`` is the config's default (30 s) unless set: a heal is repaired by the
  digests sent on reconnect and the early ones they trigger, not by a short interval;
- with ``steady_s``: afterwards, the gossip on the wire for that long (a subscriber on the
  first broker, which sees both sides through the bridge: messages and bytes per node per
  minute, by kind) and the nodes' CPU (user + system, from /proc), with no decisions made.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agentd.control.client import request
from agentd.devtools.bench_mesh import broker, start_node, stop_all, wait_connected
from agentd.devtools.broker import free_port

SITE_KEY = "site/mode"


def convergence(
    root: Path | None = None, *, nodes: int = 20, events: int = 10, digest_interval_s: float = 30.0, log_level: str = "warning",
    steady_s: float = 0.0,
) -> dict[str, Any]:
    """The convergence run; the figures as one dict (see the module's docstring)."""
    from agentd.control.commands import new_command
    from agentd.trust.envelope import envelope
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import create_key, create_key_file

    root = root or Path(tempfile.mkdtemp(prefix="agentd-conv-"))
    root.mkdir(parents=True, exist_ok=True)
    p1, p2 = free_port(), free_port()
    names = [f"n{i:02d}" for i in range(nodes)]
    keys = {n: create_key(root / n)[0].public_b64 for n in names}
    alice, _ = create_key_file(root / "alice.key")
    bridge = f"connection heal\naddress 127.0.0.1:{p1}\ntopic agentd/v1/# both 1\ncleansession true\n"
    procs: list[Any] = []
    half = nodes // 2
    with broker(root, p1) as b1, contextlib.ExitStack() as side_b:
        side_b.enter_context(broker(root, p2))
        try:
            for i, n in enumerate(names):
                cfg = {
                    "node": {"id": n, "fleet": "conv", "data_dir": str(root / n)},
                    "mqtt": {"enabled": True, "port": p1 if i < half else p2, "digest_interval_s": digest_interval_s},
                    "trust": {"peers": {m: k for m, k in keys.items() if m != n},
                              "operators": [{"name": "alice", "key": alice.public_b64, "role": "operator"}]},
                    "daemon": {"log_level": log_level},
                    "skills": [{"name": "s", "input": {"x": {"type": "number"}}, "actions": ["none", "alert"],
                                "rules": [{"name": "hot", "when": "x > 0.5", "action": "alert"},
                                          {"name": "default", "action": "none", "default": True}],
                                "fleet_state": [{"action": "alert", "key": "alerting", "value": {"hot": True}, "ttl_s": 3600}]}],
                }
                procs.append(start_node(cfg, root / n))
            for n, p in zip(names, procs, strict=True):
                wait_connected(root / n / "agentd.sock", p, timeout=600)
            for n in names:  # decide while partitioned
                for k in range(events):
                    request(root / n / "agentd.sock", {"op": "submit", "skill": "s", "data": {"x": (k % 2) * 1.0}, "id": f"{n}-{k}"})
            for port, value in ((p1, "a"), (p2, "b")):  # the same site key on both sides, B's later
                cmd = envelope("command", fleet="conv", node="alice", hlc=Clock().now(), key=alice,
                               body=new_command("fleet_set", target="all", args={"key": SITE_KEY, "value": value}))
                _publish(port, "agentd/v1/conv/cmd/all", cmd)
                time.sleep(0.01)
            want = events * nodes
            conns = {n: sqlite3.connect(f"file:{root / n / 'agentd.db'}?mode=ro", uri=True) for n in names}
            side = {n: names[:half] if i < half else names[half:] for i, n in enumerate(names)}
            deadline = time.monotonic() + 300
            while not all(_count(c) >= events * len(side[n]) and _keys(c) >= len(side[n]) + 1 for n, c in conns.items()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the partitioned sides did not settle in 300 s")
                time.sleep(0.2)
            crossed = sum(_count(c) - events * len(side[n]) for n, c in conns.items())
            target = _winners(conns.values())
            side_b.close()  # heal: the second broker comes back bridged to the first
            cpu0 = _cpu(procs)
            t0 = time.monotonic()
            b2 = side_b.enter_context(broker(root, p2, bridge))
            done: dict[str, dict[str, float]] = {"decisions": {}, "state": {}}
            while len(done["decisions"]) < nodes or len(done["state"]) < nodes:  # polled every 50 ms: the bench's own reads cost CPU too
                for n, c in conns.items():
                    if n not in done["decisions"] and _count(c) >= want:
                        done["decisions"][n] = time.monotonic() - t0
                    if n not in done["state"] and _map(c) == target:
                        done["state"][n] = time.monotonic() - t0
                if time.monotonic() - t0 > 300:
                    raise RuntimeError(f"no convergence in 300 s ({len(done['decisions'])}, {len(done['state'])} of {nodes} nodes)")
                time.sleep(0.05)
            heal_cpu = _cpu(procs) - cpu0
            reached = {n: max(done["decisions"][n], done["state"][n]) for n in names}
            extra = sum(_count(c) - want for c in conns.values())
            for c in conns.values():
                c.close()
            out = {
                "convergence_s": round(max(reached.values()), 3),
                "convergence_decisions_s": round(max(done["decisions"].values()), 3),
                "convergence_state_s": round(max(done["state"].values()), 3),
                "convergence_node_median_s": round(sorted(reached.values())[nodes // 2], 3),
                "convergence_node_first_s": round(min(reached.values()), 3), "convergence_nodes": nodes,
                "convergence_decisions_each": want, "convergence_state_keys": len(target),
                "convergence_crossed_partition": crossed, "convergence_extra_rows": extra,
                "convergence_nodes_cpu_s": round(heal_cpu, 2),  # the nodes' CPU from the heal to the last node converged
            }
            if steady_s > 0:
                out.update(_steady(p1, procs, nodes, steady_s, [b1.proc, b2.proc]))
        finally:
            stop_all(procs)
    return out


def _steady(port: int, procs: list[Any], nodes: int, seconds: float, brokers: list[Any]) -> dict[str, Any]:
    """Gossip on the wire and CPU of the nodes (and of the two brokers) over ``seconds`` with nothing decided."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    seen: Counter[str] = Counter()
    size: Counter[str] = Counter()
    lock = threading.Lock()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        try:
            kind = str(json.loads(msg.payload).get("kind"))
        except ValueError:
            kind = "?"
        with lock:
            seen[kind] += 1
            size[kind] += len(msg.payload)

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-gossip-{os.getpid()}")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe("agentd/v1/conv/gossip/#", qos=0)
    time.sleep(1.0)
    with lock:
        seen.clear()
        size.clear()
    cpu0, broker0, t0 = _cpu(procs), _cpu(brokers), time.monotonic()
    time.sleep(seconds)
    cpu1, broker1, elapsed = _cpu(procs), _cpu(brokers), time.monotonic() - t0
    sub.loop_stop()
    sub.disconnect()
    per_min = 60.0 / elapsed / nodes
    with lock:
        return {
            "steady_s": round(elapsed, 1),
            "gossip_msgs_per_node_min": round(sum(seen.values()) * per_min, 1),
            "gossip_bytes_per_node_min": round(sum(size.values()) * per_min),
            "gossip_by_kind_per_node_min": {k: [round(n * per_min, 1), round(size[k] * per_min)] for k, n in sorted(seen.items())},
            "node_cpu_pct_mean": round((cpu1 - cpu0) / elapsed / nodes * 100, 2),
            "nodes_cpu_pct_total": round((cpu1 - cpu0) / elapsed * 100, 1),
            "brokers_cpu_pct": round((broker1 - broker0) / elapsed * 100, 2),
        }


def _cpu(procs: list[Any]) -> float:
    """User + system seconds of the processes so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in procs:
        with contextlib.suppress(OSError, AttributeError):
            fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _publish(port: int, topic: str, payload: bytes) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-op-{os.getpid()}-{time.monotonic_ns()}")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    pub.publish(topic, payload, qos=1).wait_for_publish(10)
    pub.loop_stop()
    pub.disconnect()


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM fleet_decisions").fetchone()[0])


def _keys(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM fleet_state").fetchone()[0])


def _map(conn: sqlite3.Connection) -> dict[str, tuple[str, str]]:
    return {k: (h, n) for k, h, n in conn.execute("SELECT key, hlc, node FROM fleet_state")}


def _winners(conns: Any) -> dict[str, tuple[str, str]]:
    """Per key, the (HLC, writer) greatest over every node's map: what all must end with."""
    out: dict[str, tuple[str, str]] = {}
    for c in conns:
        for k, v in _map(c).items():
            out[k] = max(out.get(k, v), v)
    return out
