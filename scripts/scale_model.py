#!/usr/bin/env python3
"""A discrete-event model of one site's mesh (one broker, N nodes), calibrated on real runs (issue 16, part 5).

What it extends: the real runs of scripts/bench_convergence.py at 20 and 100 nodes (docs/SCALING.md).
Per node and digest interval T (30 s by default) a node sends one digest (its size grows with N:
one entry per origin node and per fleet-state writer) and one audit head (issue 15; ~2.4 KiB when it
has a checkpoint); the broker delivers every gossip message to the N-1 other nodes. The model has:

- a steady-state part (closed form): messages and bytes per node per minute sent and received, the
  node's CPU for what it receives, the broker's deliveries and CPU (mosquitto is single-threaded);
- a heal (event by event): half the nodes come back after a partition; each reconnects (spread over
  ``--reconnect-spread``), sends its digest; every node is a FIFO server on its own core (a site's
  nodes are separate devices) and the broker one FIFO server; a node answers the first digest that
  shows a peer lacks its decisions with one batch after 50 ms, and sends its own digest early when a
  peer's digest shows it lacks something (at most one per max(0.25 s, N/100 s)), as agentd.mesh.repair
  does. Convergence: every node has processed a batch from every node of the other side.

Costs come from calibration (``CAL``, or fitted again with ``--runs`` from bench_convergence.py outputs
with --steady at two fleet sizes): a node's CPU is an idle share plus a cost per byte received, the
broker's a cost per byte delivered. ``--cores`` runs the heal with every node sharing that many cores
(the bench machine: 2), to set the model beside the measured convergence.

    .venv/bin/python scripts/scale_model.py [--nodes 20,100,500,1000] [--interval 30] [--cores 0] [--runs FILE]
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
from dataclasses import dataclass
from typing import Any

# Calibration: the real runs of 2026-12-01 at 20 and 100 nodes (docs/SCALING.md; ``--runs`` fits them again).
# A node's CPU is its idle cost plus a cost per byte received (verify, parse, check, store): the two
# runs' steady states give both; the broker's CPU per byte delivered comes from the 100-node run.
CAL = {
    "digest_bytes_0": 360.0, "digest_bytes_per_node": 59.2,  # 1,544 B at 20 nodes, 6,283 B at 100
    "head_bytes": 650.0, "heads_per_interval": 1.0,  # issue 15's audit head, once a round (when checkpoints exist)
    "item_bytes": 600.0, "items_per_node": 11,  # a heal's batch: a node's 10 decisions and its own key
    "node_idle": 0.00228,  # CPU share of an idle daemon (timers, housekeeping)
    "cpu_per_byte": 5.56e-7,  # node CPU seconds per byte received
    "broker_per_byte": 7.1e-9,  # broker CPU seconds per byte delivered
}


@dataclass
class Steady:
    nodes: int
    msgs_out_per_min: float
    msgs_in_per_min: float
    bytes_in_per_min: float
    node_cpu_pct: float
    broker_deliveries_per_s: float
    broker_cpu_pct: float
    broker_bytes_out_per_s: float


def steady(n: int, interval: float, cal: dict[str, float]) -> Steady:
    """The closed form: what every node sends and receives per minute, and what that costs."""
    per_min = 60.0 / interval
    digest = cal["digest_bytes_0"] + cal["digest_bytes_per_node"] * n
    heads = cal["heads_per_interval"]
    out = (1 + heads) * per_min
    inbound = out * (n - 1)
    bytes_in = (digest + heads * cal["head_bytes"]) * per_min * (n - 1)
    cpu = cal["node_idle"] + bytes_in / 60 * cal["cpu_per_byte"]
    deliveries = out / 60 * n * (n - 1)
    broker_bytes = bytes_in * n / 60
    return Steady(n, out, inbound, bytes_in, cpu * 100, deliveries, broker_bytes * cal["broker_per_byte"] * 100, broker_bytes)


def heal(n: int, cal: dict[str, float], *, cores: int = 0, spread: float = 0.25, seed: int = 1) -> tuple[float, float]:
    """Seconds from the heal until every node holds what the other side had, and the CPU seconds it cost
    the nodes (event by event; side A's broker stayed up, side B's nodes reconnect)."""
    rng = random.Random(seed)
    half = n // 2
    busy = [0.0] * n  # each node's CPU is free at; with cores > 0 the nodes share a pool instead
    pool = [0.0] * cores
    broker_free = 0.0
    need = [n - half if i < half else half for i in range(n)]  # batches from the other side still to take
    answered = [False] * n  # a node's one batch (what the other side lacks of it) reaches everyone
    sent_at = [-1e9] * n  # a node's last digest
    next_ok = [0.0] * n  # the earliest time of its next early digest
    subscribed = [0.0] * n
    gap = max(0.25, n / 100.0)
    events: list[tuple[float, int, int, int, int]] = []  # (time, seq, kind, node, sender)
    seq = 0
    cpu_total = 0.0
    digest_bytes = cal["digest_bytes_0"] + cal["digest_bytes_per_node"] * n
    batch_bytes = 400 + cal["item_bytes"] * cal["items_per_node"]
    digest_cost, batch_cost = digest_bytes * cal["cpu_per_byte"], batch_bytes * cal["cpu_per_byte"]
    reconnect, digest, batch = 0, 1, 2

    def push(t: float, kind: int, node: int, sender: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, node, sender))

    def cpu(node: int, t: float, cost: float) -> float:
        nonlocal cpu_total
        cpu_total += cost
        if cores:
            k = min(range(cores), key=pool.__getitem__)
            pool[k] = max(t, pool[k]) + cost
            return pool[k]
        busy[node] = max(t, busy[node]) + cost
        return busy[node]

    def publish(t: float, kind: int, sender: int) -> None:
        nonlocal broker_free
        if kind == digest:
            sent_at[sender] = t
        for r in range(n):
            if r != sender:
                broker_free = max(t, broker_free) + (digest_bytes if kind == digest else batch_bytes) * cal["broker_per_byte"]
                push(broker_free + 0.0002, kind, r, sender)

    for i in range(half, n):  # side B reconnects: subscribes, then sends its digest
        subscribed[i] = rng.uniform(0.0, spread)
        push(subscribed[i], reconnect, i, i)
    done_at = 0.0
    while events:
        t, _, kind, node, sender = heapq.heappop(events)
        if kind == reconnect:
            publish(t + 0.005, digest, node)
        elif kind == digest:
            t1 = cpu(node, t, digest_cost)
            if (sender < half) != (node < half):
                if not answered[node]:  # it lacks what we made: one batch for all, after the 50 ms debounce
                    answered[node] = True
                    publish(t1 + 0.05, batch, node)
                if need[node] and subscribed[sender] > sent_at[node]:  # we lack its side's, and it missed our last digest
                    at = max(t1, next_ok[node])
                    next_ok[node] = at + gap
                    publish(at, digest, node)
        else:
            t1 = cpu(node, t, batch_cost)
            if (sender < half) != (node < half):
                need[node] -= 1
                if need[node] == 0:
                    done_at = max(done_at, t1)
    return done_at, cpu_total


def fit(runs: list[dict[str, Any]], cal: dict[str, float]) -> dict[str, float]:
    """Calibrate on bench_convergence.py outputs with --steady (two fleet sizes): the digest's size as a
    line in N, and a node's idle CPU and CPU per byte received from the two steady states."""
    runs = sorted(runs, key=lambda r: r["convergence_nodes"])
    lo, hi = runs[0], runs[-1]

    def point(r: dict[str, Any]) -> tuple[int, float, float, float]:
        n, kinds = r["convergence_nodes"], r["gossip_by_kind_per_node_min"]
        digests, digest_bytes = kinds.get("digest", [1.0, 0.0])
        received = (n - 1) * r["gossip_bytes_per_node_min"] / 60  # bytes per node per second
        return n, digest_bytes / digests, received, r["node_cpu_pct_mean"] / 100

    (n0, d0, b0, c0), (n1, d1, b1, c1) = point(lo), point(hi)
    out = dict(cal)
    out["digest_bytes_per_node"] = (d1 - d0) / (n1 - n0)
    out["digest_bytes_0"] = d0 - out["digest_bytes_per_node"] * n0
    out["cpu_per_byte"] = (c1 - c0) / (b1 - b0)
    out["node_idle"] = c0 - b0 * out["cpu_per_byte"]
    out["broker_per_byte"] = hi["brokers_cpu_pct"] / 100 / (b1 * n1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="20,100,500,1000")
    ap.add_argument("--interval", type=float, default=30.0)
    ap.add_argument("--cores", type=int, default=0, help="heal with every node sharing this many cores (0: a core each)")
    ap.add_argument("--reconnect-spread", type=float, default=0.25)
    ap.add_argument("--calibration", help="a JSON object overriding the calibration's figures")
    ap.add_argument("--runs", help="a file of bench_convergence.py --steady outputs (JSON lines) to calibrate on")
    a = ap.parse_args()
    cal = dict(CAL)
    if a.calibration:
        cal.update(json.loads(a.calibration))
    measured: dict[int, dict[str, Any]] = {}  # the runs, shown beside the model's figures
    if a.runs:
        with open(a.runs) as f:
            found = [json.loads(line) for line in f if line.strip().startswith("{")]
        measured = {r["convergence_nodes"]: r for r in found}
        cal = fit(found, cal)
    print(json.dumps({"calibration": {k: float(f"{v:.4g}") for k, v in cal.items()}}))
    for n in (int(x) for x in a.nodes.split(",")):
        s = steady(n, a.interval, cal)
        converged, cost = heal(n, cal, cores=a.cores, spread=a.reconnect_spread)
        print(json.dumps({
            "nodes": n, "interval_s": a.interval,
            "msgs_out_per_node_min": round(s.msgs_out_per_min, 1), "msgs_in_per_node_min": round(s.msgs_in_per_min, 1),
            "bytes_in_per_node_min": round(s.bytes_in_per_min), "node_cpu_pct": round(s.node_cpu_pct, 3),
            "broker_deliveries_per_s": round(s.broker_deliveries_per_s, 1), "broker_cpu_pct": round(s.broker_cpu_pct, 2),
            "broker_bytes_out_per_s": round(s.broker_bytes_out_per_s),
            "heal_convergence_s": round(converged, 3), "heal_nodes_cpu_s": round(cost, 2),
            **({"measured_heal_nodes_cpu_s": measured[n]["convergence_nodes_cpu_s"], "measured_node_cpu_pct": measured[n]["node_cpu_pct_mean"],
                "measured_msgs_out_per_node_min": measured[n]["gossip_msgs_per_node_min"],
                "measured_bytes_out_per_node_min": measured[n]["gossip_bytes_per_node_min"]} if n in measured else {}),
        }))


if __name__ == "__main__":
    main()
