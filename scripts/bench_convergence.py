#!/usr/bin/env python3
"""Fleet convergence after a healed partition (DESIGN section 12: 20 nodes, <= 2 s).

The same run as `agentd bench --only convergence` (agentd/devtools/bench_fleet.py), with the
fleet size, events per node and digest interval as options. Two Mosquitto brokers on
loopback, half the nodes on each, not bridged (the partition); every node decides EVENTS
events (rules only; its alerts set its own fleet-state key) and an operator sets one site key
on each side; once each side agrees within itself, the second broker restarts bridged to the
first (the heal). convergence_s runs from the heal until every node holds every decision of
every node and the same winner of every key. With --steady S, the gossip on the wire (messages
and bytes per node per minute) and the nodes' CPU are then measured for S seconds. Prints one
JSON line.

    .venv/bin/python scripts/bench_convergence.py [--nodes 20] [--events 10] [--digest-interval 30] [--steady 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from agentd.devtools.bench_mesh import convergence


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--events", type=int, default=10)
    ap.add_argument("--digest-interval", type=float, default=30.0)
    ap.add_argument("--steady", type=float, default=0.0, help="seconds of steady-state gossip and CPU to measure afterwards")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="agentd-conv-"))
    try:
        print(json.dumps(convergence(root, nodes=a.nodes, events=a.events, digest_interval_s=a.digest_interval, steady_s=a.steady)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
