#!/usr/bin/env python3
"""Fleet convergence after a healed partition (DESIGN section 12: 20 nodes, <= 2 s).

Two Mosquitto brokers on loopback; nodes 0..N/2-1 on the first, the rest on the second.
Partition: the brokers are not bridged. Every node decides EVENTS events (rules only).
Heal: the second broker restarts with a bridge to the first (its nodes reconnect with
their back-off). convergence_s is the time from the heal until every node's fleet state
holds every decision of every node (live traffic over the bridge plus anti-entropy
digests every 0.5 s). Prints one JSON line.

    .venv/bin/python scripts/bench_convergence.py [--nodes 20] [--events 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from agentd.fleet_demo import mosquitto_binary
from agentd.signing import create_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker(folder: Path, port: int, bridge_to: int | None) -> subprocess.Popen[bytes]:
    conf = folder / f"broker-{port}.conf"
    text = f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\nmax_queued_messages 100000\n"
    if bridge_to:
        text += f"connection heal\naddress 127.0.0.1:{bridge_to}\ntopic agentd/v1/# both 1\ncleansession true\n"
    conf.write_text(text)
    proc = subprocess.Popen([mosquitto_binary() or "mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("broker did not start")


def request(sock_path: Path, req: dict) -> dict:
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(sock_path))
    s.sendall(json.dumps(req).encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        buf += s.recv(65536)
    s.close()
    return json.loads(buf)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--events", type=int, default=10)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="agentd-conv-"))
    p1, p2 = free_port(), free_port()
    names = [f"n{i:02d}" for i in range(a.nodes)]
    keys = {n: create_key(root / n)[0].public_b64 for n in names}
    b1 = broker(root, p1, None)
    b2 = broker(root, p2, None)
    procs = []
    try:
        for i, n in enumerate(names):
            port = p1 if i < a.nodes // 2 else p2
            cfg = {
                "node": {"id": n, "fleet": "conv", "data_dir": str(root / n)},
                "mqtt": {"enabled": True, "port": port, "digest_interval_s": 0.5},
                "trust": {"peers": {m: k for m, k in keys.items() if m != n}},
                "daemon": {"log_level": "warning"},
                "skills": [{"name": "s", "input": {"x": {"type": "number"}}, "actions": ["none", "alert"],
                            "rules": [{"name": "hot", "when": "x > 0.5", "action": "alert"},
                                      {"name": "default", "action": "none", "default": True}]}],
            }
            (root / n / "agentd.yaml").write_text(yaml.safe_dump(cfg))
            procs.append(subprocess.Popen([sys.executable, "-m", "agentd.cli", "run", "--config", str(root / n / "agentd.yaml")],
                                          stderr=open(root / n / "daemon.log", "ab")))  # noqa: SIM115
        for n in names:  # wait until every node is up and connected
            deadline = time.monotonic() + 120
            while True:
                try:
                    if request(root / n / "agentd.sock", {"op": "status"})["result"]["broker"]["connected"]:
                        break
                except (OSError, KeyError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{n} did not connect")
                time.sleep(0.1)
        for n in names:  # decide while partitioned
            for k in range(a.events):
                request(root / n / "agentd.sock", {"op": "submit", "skill": "s", "data": {"x": (k % 2) * 1.0}, "id": f"{n}-{k}"})
        time.sleep(1.0)  # let each side settle
        b2.terminate()
        b2.wait()
        t0 = time.monotonic()
        b2 = broker(root, p2, p1)  # heal
        want = a.events * a.nodes
        conns = {n: sqlite3.connect(f"file:{root / n / 'agentd.db'}?mode=ro", uri=True) for n in names}
        while True:
            done = all(c.execute("SELECT COUNT(*) FROM fleet_decisions").fetchone()[0] >= want for c in conns.values())
            if done:
                break
            if time.monotonic() - t0 > 120:
                raise RuntimeError("no convergence in 120 s")
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
        print(json.dumps({"nodes": a.nodes, "events_per_node": a.events, "convergence_s": round(elapsed, 3), "decisions_each": want}))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        b1.terminate()
        b2.terminate()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
