#!/usr/bin/env python3
"""Junk flood (issue 11): what a flood of hostile MQTT messages costs a node that keeps deciding.

One private Mosquitto on a free loopback port and one `agentd run` child on it, with the
example freezer skill and its real int8 ONNX model (as the integration tests'
``freezer_config``), a configured peer (``peer-a``) and operator (``alice``), and
``mesh.refusal_summary_s`` from ``--summary-s``. Two phases in the same run:

1. baseline: good events at ``--good-rate``/s for ``--seconds`` s on
   ``nodes/<node>/events/freezer_health`` (QoS 1, with ids);
2. flood: the same good events at the same rate while ``--publishers`` processes send
   ``--junk`` junk messages as fast as they can, spread over every topic of
   ``agentd.mesh.subscriptions(cfg)`` (wildcards filled in), QoS 0 and 1: bytes that are
   not JSON, deep nesting, 5,000-digit numbers, lone surrogates, oversized payloads,
   events that do not validate, unsigned and forged commands, a replayed command (a real
   one of alice's, sent once before the flood), unsigned and forged peer decisions and
   statuses. The phase runs until the node's refusal counters stopped growing, and at
   least ``--seconds`` s.

Per phase: each good decision's ``latency_ms`` (from the node's SQLite, read-only, after
the phase) against the skill's ``deadline_ms``, and publish -> signed decision received
(``e2e``). For the flood: junk published/s and absorbed/s (``broker.refused`` summed, from
``{"op": "status"}`` every 0.2 s), replies on ``nodes/+/reply``, reconnects and failures,
and the audit table's growth (rows and bytes, ``input_refused`` records apart) after a
clean stop, which writes the last summaries. Prints a JSON object, then a short table.

    .venv/bin/python scripts/bench_flood.py [--junk 10000] [--good-rate 50] [--seconds 15] [--summary-s 5] [--junk-rate 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from agentd.config.loader import load_config
from agentd.control.client import request
from agentd.control.commands import new_command
from agentd.daemon.sources import event_for
from agentd.devtools.bench_mesh import broker, free_port, nodelay, publisher, start_node, stop_all, wait_connected
from agentd.errors import AgentdError
from agentd.ids import new_id
from agentd.mesh.inbound import subscriptions
from agentd.state import queries
from agentd.stats import percentile
from agentd.trust.envelope import envelope
from agentd.trust.hlc import Clock
from agentd.trust.keys import NodeKey, create_key_file

REPO = Path(__file__).resolve().parents[1]
FLEET, NODE, SKILL = "flood", "flood-node", "freezer_health"
PEERS = ("peer-a", "peer-x")  # peer-a is configured (its key is trusted), peer-x is not
GOOD = {"temperature_c": -18, "door_open_s": 0, "compressor_a": 4}
SAMPLE_S = 0.2
RECORD_BYTES = "LENGTH(body) + LENGTH(prev_hash) + LENGTH(hash) + LENGTH(kind) + IFNULL(LENGTH(ref), 0)"  # one audit row
AUDIT_BYTES = f"SUM({RECORD_BYTES})"


# -- the node ------------------------------------------------------------------


def node_config(data_dir: Path, port: int, summary_s: float, peer: NodeKey, alice: NodeKey) -> dict[str, Any]:
    """The example freezer skill with the real ONNX model (tests/integration/conftest.py's freezer_config)."""
    manifest = json.loads((REPO / "models" / "freezer_anomaly.json").read_text())
    return {
        "node": {"id": NODE, "fleet": FLEET, "data_dir": str(data_dir)},
        "lifecycle": {"stage": "canary", "release": "flood-1"},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port},
        "mesh": {"refusal_summary_s": summary_s},
        "trust": {"peers": {"peer-a": peer.public_b64}, "operators": [{"name": "alice", "key": alice.public_b64, "role": "admin"}]},
        "daemon": {"drain_timeout_s": 10, "simulator": {"enabled": False}},
        "models": [{
            "name": "freezer_anomaly", "backend": "onnx", "path": str(REPO / "models" / manifest["file"]),
            "sha256": manifest["sha256"], "inputs": manifest["inputs"], "labels": manifest["labels"],
        }],
        "skills": [{
            "name": SKILL,
            "input": {
                "temperature_c": {"type": "number", "min": -60, "max": 60},
                "door_open_s": {"type": "number", "min": 0, "max": 86400},
                "compressor_a": {"type": "number", "min": 0, "max": 100},
                "note": {"type": "string", "required": False, "max_length": 500},
            },
            "actions": ["none", "alert", "defrost", "shutdown"],
            "deadline_ms": 200,
            "cascade": [{"model": "freezer_anomaly", "min_confidence": 0.8,
                         "map": {"normal": "none", "door_open": "alert", "icing": "defrost", "failure": "shutdown"}}],
            "rules": [
                {"name": "dead", "when": "compressor_a < 0.5 && temperature_c > -10.0", "action": "shutdown"},
                {"name": "door", "when": "door_open_s > 120.0", "action": "alert"},
                {"name": "default", "action": "none", "default": True},
            ],
            "approval": {"actions": ["shutdown"], "interim": "alert", "timeout_s": 900},
        }],
    }


def concrete_topics(filters: list[str]) -> list[str]:
    """Each filter with its wildcard filled in: a skill that exists and one that does not, the
    configured and an unknown peer. The node's own status topic is left out (the node ignores
    its own messages there without counting them)."""
    out: list[str] = []
    for f in filters:
        parts = f.split("/")
        options = [[]]
        for i, part in enumerate(parts):
            prev = parts[i - 1] if i else ""
            fill = [SKILL, "nope"] if prev == "events" else list(PEERS) if prev in ("nodes", "gossip") else ["x"]
            options = [[*o, p] for o in options for p in (fill if part in ("+", "#") else [part])]
        out += ["/".join(o) for o in options]
    return list(dict.fromkeys(out))


# -- the junk ------------------------------------------------------------------


def nest(n: int, inner: str = "1", *, key: str | None = None) -> str:
    return "[" * n + inner + "]" * n if key is None else ('{"' + key + '":') * n + inner + "}" * n


def event_text(top: str = "", **fields: str) -> bytes:
    """An event whose data members are raw JSON text (any token can be placed)."""
    data = {"temperature_c": "-18", "door_open_s": "0", "compressor_a": "4", **fields}
    return ("{" + top + '"data":{' + ",".join(f"{json.dumps(k)}:{v}" for k, v in data.items()) + "}}").encode()


def envelope_text(body: str, *, kind: str = "decision", node: str = "peer-a") -> bytes:
    """A v2-shaped envelope with a raw JSON body and a garbage signature."""
    head = json.dumps({"v": 2, "fleet": FLEET, "kind": kind, "id": new_id(), "node": node, "hlc": Clock().now()})
    return (head[:-1] + ',"body":' + body + ',"sig":"AAAA"}').encode()


def signed(kind: str, node: str, body: dict[str, Any], key: NodeKey, *, unsigned: bool = False) -> bytes:
    env = json.loads(envelope(kind, fleet=FLEET, node=node, hlc=Clock().now(), body=body, key=key))
    if unsigned:
        env.pop("sig")
    return json.dumps(env).encode()


def corpus(stranger: NodeKey, replay: bytes) -> list[tuple[str, bytes]]:
    """Junk anyone on the broker can send (the replay is a real command that was already used)."""
    decision = {"id": new_id(), "event_id": "e", "node": "peer-a", "skill": SKILL, "action": "shutdown", "created_at": time.time()}
    return [
        ("not-json", b"not json"),
        ("invalid-utf8", b"\xff\xfe\xfd\xfc" * 16),
        ("binary", bytes(range(256)) * 4),
        ("truncated", b'{"data":{"temperature_c":'),
        ("nan", event_text(temperature_c="NaN")),
        ("arrays-20000-deep", nest(20000).encode()),  # 40 kB
        ("objects-2000-deep", nest(2000, key="a").encode()),
        ("deep-in-event-data", event_text(note=nest(2000, '"x"'))),
        ("deep-in-envelope-body", envelope_text('{"x":' + nest(2000) + "}")),
        ("int-5000-digits", event_text(temperature_c="9" * 5000)),
        ("exponent-5000-digits", event_text(door_open_s="1e" + "9" * 5000)),
        ("int-5000-digits-in-command", envelope_text('{"expires_at":' + "1" * 5000 + "}", kind="command", node="alice")),
        ("lone-surrogate-in-event", event_text(note='"\\ud800"')),
        ("lone-surrogate-in-envelope", envelope_text('{"id":"\\udfff"}')),
        ("event-not-valid", json.dumps({"data": {**GOOD, "humidity": 3}}).encode()),
        ("oversized-garbage", b"x" * 70_000),
        ("oversized-event", event_text(note=json.dumps("x" * 66_000))),
        ("unsigned-command", signed("command", "alice", new_command("set_mode", target=NODE, args={"mode": "observe"}), stranger,
                                    unsigned=True)),
        ("unsigned-command-all", signed("command", "alice", new_command("status", target="all"), stranger, unsigned=True)),
        ("forged-command", signed("command", "alice", new_command("quarantine", target=NODE), stranger)),
        ("forged-command-all", signed("command", "alice", new_command("set_mode", target="all", args={"mode": "manual"}), stranger)),
        ("command-by-stranger", signed("command", "mallory", new_command("reload", target=NODE), stranger)),
        ("replayed-command", replay),
        ("unsigned-peer-decision", signed("decision", "peer-a", decision, stranger, unsigned=True)),
        ("forged-peer-decision", signed("decision", "peer-a", decision, stranger)),
        ("forged-peer-status", signed("status", "peer-a", {"status": "online", "public_key": stranger.public_b64}, stranger)),
        ("decision-by-stranger", signed("decision", "peer-x", {**decision, "node": "peer-x"}, stranger)),
    ]


def _junk_worker(port: int, plan: list[tuple[str, bytes, int]], index: int, step: int, count: int, rate: float, out: Any) -> None:
    """One publisher process: messages index, index + step, ... of the plan, as fast as paho takes them
    (or at ``rate``/s when it is not 0)."""
    pub = publisher(port)
    infos = []
    t0 = time.time()
    sent = 0
    for i in range(index, count, step):
        if rate and sent % 10 == 0:
            wait = t0 + sent / rate - time.time()
            if wait > 0:
                time.sleep(wait)
        name, payload, qos = plan[i % len(plan)]
        infos.append(pub.publish(name, payload, qos=qos))
        sent += 1
    for info in infos:  # QoS 1: acknowledged by the broker; QoS 0: written to the socket
        info.wait_for_publish(300)
    t1 = time.time()
    pub.loop_stop()
    pub.disconnect()
    out.put({"sent": sent, "bytes": sum(len(plan[i % len(plan)][1]) for i in range(index, count, step)), "t0": t0, "t1": t1})


# -- measuring -----------------------------------------------------------------


class Listener:
    """Decisions (first arrival per event id) and replies, as a subscriber sees them."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.arrived: dict[str, float] = {}
        self.replies: list[tuple[float, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-sub-{new_id()[:8]}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        nodelay(self.client)
        self.client.loop_start()
        self.client.subscribe([(f"agentd/v1/{FLEET}/nodes/{NODE}/decisions", 1), (f"agentd/v1/{FLEET}/nodes/+/reply", 1)])
        if not subscribed.wait(10):
            raise RuntimeError("the listener was not confirmed by the broker")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.perf_counter()
        if msg.topic.endswith("/reply"):
            self.replies.append((time.time(), bytes(msg.payload)))
            return
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            ident = json.loads(msg.payload)["body"]["event_id"]
            self.arrived.setdefault(ident, now)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Sampler(threading.Thread):
    """The node's broker counters every SAMPLE_S, from the local socket."""

    def __init__(self, sock: Path) -> None:
        super().__init__(daemon=True)
        self.sock, self.samples, self.stopping = sock, [], threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(AgentdError, OSError):
                b = request(self.sock, {"op": "status"}, timeout_s=10)["broker"]
                self.samples.append({
                    "t": time.time(), "refused": sum(b.get("refused", {}).values()), "by_reason": dict(b.get("refused", {})),
                    "events_refused": b["events_refused"], "rejected": sum(b.get("rejected", {}).values()),
                    "events_in": b["events_in"], "reconnects": b["reconnects"], "failures": b["failures"],
                    "handler_errors": b.get("handler_errors", 0), "connected": b["connected"],
                })
            self.stopping.wait(SAMPLE_S)

    def last(self) -> dict[str, Any]:
        while not self.samples:
            time.sleep(0.05)
        return self.samples[-1]


def good_events(pub: Any, topic_name: str, rate: float, prefix: str, stop: threading.Event, sent: dict[str, float],
                max_s: float, skill: Any) -> None:
    """Good events of the simulator at ``rate``/s until ``stop`` (or ``max_s``); publish times by id."""
    rng = random.Random(11)
    t0 = time.perf_counter()
    i = 0
    while not stop.is_set() and time.perf_counter() - t0 < max_s:
        wait = t0 + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        ident = f"{prefix}-{i}"
        payload = json.dumps({"id": ident, "data": event_for(skill, rng)}).encode()
        sent[ident] = time.perf_counter()
        pub.publish(topic_name, payload, qos=1)
        i += 1


def wait_decided(listener: Listener, ids: list[str], grace_s: float = 30.0) -> None:
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and not all(i in listener.arrived for i in ids):
        time.sleep(0.05)


def decision_figures(conn: sqlite3.Connection, sent: dict[str, float], listener: Listener, deadline_ms: float) -> dict[str, Any]:
    lat: list[float] = []
    for event_id, record in conn.execute("SELECT event_id, record FROM decisions"):
        if event_id in sent:
            lat.append(float(json.loads(record)["latency_ms"]))
    e2e = [(listener.arrived[i] - t) * 1000 for i, t in sent.items() if i in listener.arrived]
    return {
        "events": len(sent), "decided": len(lat), "received": len(e2e),
        "on_time": sum(1 for v in lat if v <= deadline_ms), "late": sum(1 for v in lat if v > deadline_ms),
        "latency_p50_ms": round(percentile(lat, 50), 3) if lat else None, "latency_p99_ms": round(percentile(lat, 99), 3) if lat else None,
        "latency_max_ms": round(max(lat), 3) if lat else None,
        "e2e_p50_ms": round(percentile(e2e, 50), 3) if e2e else None, "e2e_p99_ms": round(percentile(e2e, 99), 3) if e2e else None,
        "e2e_max_ms": round(max(e2e), 3) if e2e else None,
        "e2e_over_deadline": sum(1 for v in e2e if v > deadline_ms),
    }


def audit_figures(conn: sqlite3.Connection) -> dict[str, Any]:
    rows, size = conn.execute(f"SELECT COUNT(*), IFNULL({AUDIT_BYTES}, 0) FROM audit").fetchone()
    refused_rows, refused_size = conn.execute(f"SELECT COUNT(*), IFNULL({AUDIT_BYTES}, 0) FROM audit WHERE kind = 'input_refused'").fetchone()
    kinds = dict(conn.execute("SELECT kind, COUNT(*) FROM audit GROUP BY kind").fetchall())
    summarised = sum(json.loads(b)["count"] for (b,) in conn.execute("SELECT body FROM audit WHERE kind = 'input_refused'"))
    return {"rows": rows, "bytes": size, "input_refused_rows": refused_rows, "input_refused_bytes": refused_size,
            "input_refused_count_sum": summarised, "by_kind": kinds}


# -- the run -------------------------------------------------------------------


def run(a: argparse.Namespace, root: Path) -> dict[str, Any]:
    port = free_port()
    keys = root / "keys"
    stranger, peer, alice = (create_key_file(keys / f"{n}.key")[0] for n in ("stranger", "peer", "alice"))
    data = root / "node"
    cfg = node_config(data, port, a.summary_s, peer, alice)
    data.mkdir(parents=True)
    (data / "agentd.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_config(data / "agentd.yaml")
    skill = loaded.config.skill(SKILL)
    deadline_ms = float(skill.deadline_ms)
    topics = concrete_topics(subscriptions(loaded.config))
    events_topic = f"agentd/v1/{FLEET}/nodes/{NODE}/events/{SKILL}"
    sock = data / "agentd.sock"
    out: dict[str, Any] = {"cpus": multiprocessing.cpu_count(), "python": sys.version.split()[0], "junk": a.junk,
                           "good_rate": a.good_rate, "junk_rate": a.junk_rate or "max", "seconds": a.seconds, "refusal_summary_s": a.summary_s,
                           "publishers": a.publishers, "deadline_ms": deadline_ms, "topics": topics}
    with broker(root, port):
        proc = start_node(cfg, data)
        try:
            wait_connected(sock, proc)
            listener = Listener(port)
            pub = publisher(port)
            sampler = Sampler(sock)
            sampler.start()
            # warm-up, and one real command of alice's: its reply is the only one expected; its bytes are the replay
            warm: dict[str, float] = {}
            good_events(pub, events_topic, a.good_rate, "warm", threading.Event(), warm, 20 / a.good_rate, skill)
            command = signed("command", "alice", new_command("status", target=NODE), alice)
            pub.publish(f"agentd/v1/{FLEET}/cmd/{NODE}", command, qos=1)
            wait_decided(listener, list(warm))
            give_up = time.monotonic() + 10
            while not listener.replies and time.monotonic() < give_up:
                time.sleep(0.05)
            out["reply_to_the_real_command"] = len(listener.replies)
            out["reply_bytes"] = len(listener.replies[0][1]) if listener.replies else None

            # 1. baseline
            base_sent: dict[str, float] = {}
            good_events(pub, events_topic, a.good_rate, "base", threading.Event(), base_sent, a.seconds, skill)
            wait_decided(listener, list(base_sent))
            time.sleep(2 * SAMPLE_S)
            before = sampler.last()
            conn = queries.open_readonly(data)
            audit_before = audit_figures(conn)
            command_record = conn.execute(f"SELECT {RECORD_BYTES} FROM audit WHERE kind = 'command'").fetchone()[0]
            conn.close()
            replies_before = len(listener.replies)

            # 2. flood
            plan = []
            combos = [(name, payload) for _, payload in corpus(stranger, command) for name in topics]
            for i in range(len(combos) * 2):
                name, payload = combos[i % len(combos)]
                plan.append((name, payload, (i + i // len(combos)) % 2))  # every combination at QoS 0 and 1
            flood_sent: dict[str, float] = {}
            stop = threading.Event()
            good = threading.Thread(target=good_events, args=(pub, events_topic, a.good_rate, "flood", stop, flood_sent, 600.0, skill))
            phase_t0 = time.time()
            good.start()
            time.sleep(1.0)
            ctx = multiprocessing.get_context("spawn")  # not fork: this process runs paho threads
            results = ctx.Queue()
            workers = [ctx.Process(target=_junk_worker, args=(port, plan, k, a.publishers, a.junk, a.junk_rate / a.publishers, results)) for k in range(a.publishers)]
            for w in workers:
                w.start()
            done = [results.get(timeout=600) for _ in workers]
            for w in workers:
                w.join(30)
            junk_t0, junk_t1 = min(d["t0"] for d in done), max(d["t1"] for d in done)
            # absorbed: until the refusal counters stop growing (3 s without a change), or all are counted
            last, changed = None, time.time()
            while True:
                time.sleep(SAMPLE_S)
                now = sampler.last()
                if now["refused"] != last:
                    last, changed = now["refused"], now["t"]
                if last - before["refused"] >= a.junk or time.time() - changed >= 3.0:
                    break
            absorbed_at = next(x["t"] for x in sampler.samples if x["refused"] == last)  # within SAMPLE_S
            while time.time() - phase_t0 < max(a.seconds, absorbed_at - phase_t0 + 1.0):
                time.sleep(0.1)
            stop.set()
            good.join()
            wait_decided(listener, list(flood_sent))
            time.sleep(2 * SAMPLE_S)
            after = sampler.last()
            sampler.stopping.set()
            sampler.join()
            # good events published while the junk was still being absorbed
            t_perf = time.perf_counter() - time.time()  # perf_counter = time.time() + t_perf
            under = {i: t for i, t in flood_sent.items() if junk_t0 + t_perf <= t <= absorbed_at + t_perf}
            replies_flood = len(listener.replies) - replies_before
            samples = [x for x in sampler.samples if x["t"] >= junk_t0 - SAMPLE_S]
        finally:
            t_stop = time.time()
            stop_all([proc])  # a clean stop: the last input_refused summaries are written
        listener.close()
        pub.loop_stop()
        pub.disconnect()
    conn = queries.open_readonly(data)
    try:
        audit_after = audit_figures(conn)
        base_fig = decision_figures(conn, base_sent, listener, deadline_ms)
        flood_fig = decision_figures(conn, flood_sent, listener, deadline_ms)
        under_fig = decision_figures(conn, under, listener, deadline_ms)
        decided_junk = conn.execute("SELECT COUNT(*) FROM decisions WHERE event_id NOT LIKE 'warm-%' AND event_id NOT LIKE 'base-%'"
                                    " AND event_id NOT LIKE 'flood-%'").fetchone()[0]
        fleet_rows = conn.execute("SELECT COUNT(*) FROM fleet_decisions WHERE node != ?", (NODE,)).fetchone()[0]
        peers = conn.execute("SELECT COUNT(*) FROM peers").fetchone()[0]
        accepted = sum(1 for (b,) in conn.execute("SELECT body FROM audit WHERE kind = 'command'") if json.loads(b).get("accepted"))
        mode = conn.execute("SELECT value FROM settings WHERE key = 'mode'").fetchone()
        verified = queries.verify_audit(conn).ok
        refused_records = conn.execute(f"SELECT ts, {RECORD_BYTES} FROM audit WHERE kind = 'input_refused'").fetchall()
    finally:
        conn.close()

    sent_bytes = sum(d["bytes"] for d in done)
    counted = after["refused"] - before["refused"]
    at_publish_end = next((x["refused"] for x in reversed(samples) if x["t"] <= junk_t1), before["refused"]) - before["refused"]
    absorb_s = absorbed_at - junk_t0
    delta = {k: v - before["by_reason"].get(k, 0) for k, v in after["by_reason"].items() if v != before["by_reason"].get(k, 0)}
    on_cmd = sum(1 for i in range(a.junk) if "/cmd/" in plan[i % len(plan)][0])
    out.update({
        "junk_sent": sum(d["sent"] for d in done), "junk_bytes": sent_bytes,
        "junk_publish_s": round(junk_t1 - junk_t0, 3), "junk_published_per_s": round(a.junk / (junk_t1 - junk_t0), 1),
        "junk_counted": counted, "junk_absorb_s": round(absorb_s, 3), "junk_absorbed_per_s": round(counted / absorb_s, 1),
        "junk_absorbed_mb_per_s": round(sent_bytes / 1e6 / absorb_s, 2),
        # once the publishers are done, they no longer take the CPU from the node (same machine)
        "junk_absorbed_per_s_after_publish": round((counted - at_publish_end) / (absorbed_at - junk_t1), 1) if absorbed_at > junk_t1 + SAMPLE_S else None,
        "junk_on_command_topics": on_cmd, "refused_by_reason": dict(sorted(delta.items())), "reasons": len(delta),
        "events_refused": after["events_refused"] - before["events_refused"], "peer_rejected": after["rejected"] - before["rejected"],
        "reconnects_during_flood": after["reconnects"] - before["reconnects"], "failures_during_flood": after["failures"] - before["failures"],
        "handler_errors": after["handler_errors"], "replies_during_flood": replies_flood,
        "counted_over_time": [[round(x["t"] - junk_t0, 1), x["refused"] - before["refused"]] for x in samples[:: max(1, len(samples) // 40)]],
        "baseline": base_fig, "flood": flood_fig, "under_junk": under_fig,
        "junk_decided": decided_junk, "junk_peer_decisions_stored": fleet_rows, "peers_stored": peers,
        "commands_accepted": accepted, "mode_after": mode[0] if mode else "auto",
        "audit_before_flood": audit_before, "audit_after_stop": audit_after,
        "command_audit_record_bytes": command_record, "audit_chain_verified": verified,
    })
    grown_rows = audit_after["input_refused_rows"] - audit_before["input_refused_rows"]
    grown_bytes = audit_after["input_refused_bytes"] - audit_before["input_refused_bytes"]
    per_record = grown_bytes / grown_rows if grown_rows else 0.0
    # The audit cost is one record per path.reason per summary interval the flood touches, whatever
    # its size: with the default 60 s, a flood absorbed in absorb_s touches at most
    # ceil(absorb_s / 60) + 1 intervals (it may straddle a boundary).
    bound_60 = len(delta) * (math.ceil(absorb_s / 60.0) + 1)
    log_lines = [json.loads(line) for line in (data / "daemon.log").read_text().splitlines() if line.startswith("{")]
    warned = [x for x in log_lines if x.get("level") == "warning"]  # in this run, only the refusals warn
    out.update({
        "audit_input_refused_rows": grown_rows, "audit_input_refused_bytes": grown_bytes,
        "audit_input_refused_rows_while_running": sum(1 for ts, _ in refused_records if ts < t_stop),
        "audit_input_refused_rows_at_stop": sum(1 for ts, _ in refused_records if ts >= t_stop),
        "audit_input_refused_bytes_per_record": round(per_record, 1),
        "audit_rows_growth": audit_after["rows"] - audit_before["rows"], "audit_bytes_growth": audit_after["bytes"] - audit_before["bytes"],
        "audit_decision_rows_growth": audit_after["by_kind"].get("decision", 0) - audit_before["by_kind"].get("decision", 0),
        "audit_bound_at_60s_rows": bound_60, "audit_bound_at_60s_bytes": round(bound_60 * per_record),
        # before issue 11 every refused command was one audit record and one signed reply (sizes: the real command's)
        "before_change_command_records": on_cmd, "before_change_command_audit_bytes": on_cmd * command_record,
        "before_change_reply_bytes": on_cmd * (out["reply_bytes"] or 0),
        "log_lines": len(log_lines), "log_warning_lines": len(warned), "log_warning_bytes": sum(len(json.dumps(x)) + 1 for x in warned),
        "log_loop_lag_warnings": sum(1 for x in log_lines if "lagged" in str(x.get("msg"))),
        "log_errors": sum(1 for x in log_lines if x.get("level") in ("error", "critical")),
    })
    for key in ("latency_p50_ms", "latency_p99_ms", "e2e_p50_ms", "e2e_p99_ms"):
        b, f = base_fig[key], under_fig[key]
        out[f"ratio_under_junk_{key}"] = round(f / b, 2) if b and f else None
    return out


def table(r: dict[str, Any]) -> str:
    b, f, u = r["baseline"], r["flood"], r["under_junk"]
    lines = [
        f"junk: {r['junk_sent']} messages ({r['junk_bytes'] / 1e6:.1f} MB) on {len(r['topics'])} topics, "
        f"published in {r['junk_publish_s']} s ({r['junk_published_per_s']}/s); counted {r['junk_counted']} in {r['junk_absorb_s']} s "
        f"({r['junk_absorbed_per_s']}/s absorbed; {r['junk_absorbed_per_s_after_publish']}/s once the publishers were done), "
        f"{r['reasons']} path.reason keys",
        f"reconnects {r['reconnects_during_flood']}, failures {r['failures_during_flood']}, handler errors {r['handler_errors']}, "
        f"replies during flood {r['replies_during_flood']}, junk decided {r['junk_decided']}, commands accepted {r['commands_accepted']} "
        f"(the real one), audit chain verified {r['audit_chain_verified']}",
        f"audit: input_refused +{r['audit_input_refused_rows']} rows / +{r['audit_input_refused_bytes']} bytes "
        f"(summary interval {r['refusal_summary_s']} s; {r['audit_input_refused_rows_while_running']} while running, "
        f"{r['audit_input_refused_rows_at_stop']} at the stop); all audit +{r['audit_rows_growth']} rows / +{r['audit_bytes_growth']} bytes "
        f"({r['audit_decision_rows_growth']} of them the good decisions'); log: {r['log_warning_lines']} warnings of {r['log_lines']} lines",
        f"before issue 11: {r['before_change_command_records']} refused commands = {r['before_change_command_records']} audit records "
        f"(~{r['before_change_command_audit_bytes']} bytes) + as many signed replies (~{r['before_change_reply_bytes']} bytes)",
        "",
        f"{'good events':<28}{'baseline':>12}{'flood phase':>14}{'under junk':>12}{'ratio':>8}",
    ]
    for label, key in (("decided / sent", None), ("late (> deadline_ms)", "late"), ("latency_ms p50", "latency_p50_ms"),
                       ("latency_ms p99", "latency_p99_ms"), ("e2e ms p50", "e2e_p50_ms"), ("e2e ms p99", "e2e_p99_ms"),
                       ("e2e ms max", "e2e_max_ms")):
        if key is None:
            cells = [f"{x['decided']}/{x['events']}" for x in (b, f, u)]
            ratio = ""
        else:
            cells = [str(x[key]) for x in (b, f, u)]
            ratio = f"{u[key] / b[key]:.2f}" if key.endswith("ms") and b[key] and u[key] else ""
        lines.append(f"{label:<28}{cells[0]:>12}{cells[1]:>14}{cells[2]:>12}{ratio:>8}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--junk", type=int, default=10_000, help="junk messages in the flood")
    ap.add_argument("--good-rate", type=float, default=50.0, help="good events per second, in both phases")
    ap.add_argument("--seconds", type=float, default=15.0, help="baseline length; the flood phase's least length")
    ap.add_argument("--summary-s", type=float, default=5.0, help="mesh.refusal_summary_s of the node (default of agentd: 60)")
    ap.add_argument("--publishers", type=int, default=2, help="junk publisher processes")
    ap.add_argument("--junk-rate", type=float, default=0.0, help="junk messages per second in all (0: as fast as they go)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (node database and log)")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="agentd-flood-"))
    try:
        result = run(a, root)
        print(json.dumps(result))
        print(table(result), file=sys.stderr)
    finally:
        if a.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
