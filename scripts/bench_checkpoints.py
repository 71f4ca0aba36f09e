"""What checkpointing costs per decision (issue 15): chained signed checkpoints against none and
against the legacy unchained ones, all in one run, and what `agentd audit verify` costs per record.

Three measures, in CPU time of the process (``time.process_time``), each mode on a fresh
database, rounds interleaved (each starting at another mode, after a warm-up round) and the
best round kept (the shared reference machine's other load only ever adds time):

- the parts: one checkpoint signed (chained: payload, Ed25519, digest, insert; legacy: payload,
  Ed25519, insert) and one reload of the head at the start of a commit, each the best of 7
  repeats of 200 calls; per decision, a checkpoint costs its time over ``checkpoint_every`` and
  the reload its extra time over the decisions per commit;

- the audit log alone (the writer's own work for the trail): N decisions' audit records
  appended in commits of --batch, each commit reloading the head as the writer does, a
  checkpoint when due; no fsync (``synchronous=OFF``), so the CPU cost is what shows;
- the store end to end: N decisions through ``Store.record_decision`` with 256 in flight
  (event, decision, audit record, outbox row, group commit), ``synchronous=normal``.

Modes: ``none`` (the hash chain only: checkpoint_every 10^6, the interval never reached),
``legacy`` (the code before issue 15: unchained checkpoint every 1000, the head read with two
queries), ``chained`` (the defaults: 1000 records / 300 s), ``chained_100`` (every 100).

    .venv/bin/python scripts/bench_checkpoints.py              # 2,000 decisions, best of 30 rounds (about 2 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from agentd.state import queries
from agentd.state.audit_log import INSERT, AuditLog, base_of
from agentd.state.migrations import migrate
from agentd.state.store import DecisionWrite, Store
from agentd.trust.audit import record_hash
from agentd.trust.canonical import canonical
from agentd.trust.checkpoints import checkpoint_payload
from agentd.trust.keys import NodeKey, create_key

NODE = "bench"
MODES = {"none": (10**6, 1e9), "legacy": (1000, 300.0), "chained": (1000, 300.0), "chained_100": (100, 300.0)}


class LegacyAuditLog(AuditLog):
    """The audit log as it was before issue 15 (commit a7d05dd): the same chain, unchained checkpoints."""

    def reload(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self.head = (int(row[0]), str(row[1])) if row else base_of(conn)
        last_cp = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM checkpoints").fetchone()[0]
        self.since_checkpoint = self.head[0] - last_cp

    def append(self, conn: sqlite3.Connection, kind: str, ref: str | None, body: dict[str, Any], ts: float | None = None) -> int:
        seq, prev = self.head[0] + 1, self.head[1]
        ts = round(ts if ts is not None else time.time(), 6)
        text = canonical(body).decode()
        h = record_hash(prev, seq, ts, kind, ref, text)
        conn.execute(INSERT, (seq, ts, kind, ref, text, prev, h))
        self.head = (seq, h)
        self.since_checkpoint += 1
        return seq

    @property
    def checkpoint_due(self) -> bool:
        return self.since_checkpoint >= self.bound.records

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        seq, h = self.head
        if seq == 0:
            return
        ts = round(time.time(), 6)
        sig = self._key.sign(checkpoint_payload(self._node, seq, h, ts))
        conn.execute("INSERT OR REPLACE INTO checkpoints(seq, hash, ts, node, public_key, sig) VALUES (?,?,?,?,?,?)",
                     (seq, h, ts, self._node, self._key.public_b64, sig))
        self.since_checkpoint = 0


def audit_log(mode: str, key: NodeKey) -> AuditLog:
    every, interval = MODES[mode]
    cls = LegacyAuditLog if mode == "legacy" else AuditLog
    return cls(key=key, node=NODE, checkpoint_every=every, checkpoint_interval_s=interval)


def record(i: int) -> dict[str, Any]:
    now = round(time.time(), 6)
    return {"id": f"d{i:08d}", "event_id": f"e{i:08d}", "node": NODE, "skill": "freezer_health", "action": "alert",
            "status": "decided", "source": "model", "model": "freezer_anomaly", "confidence": 0.93,
            "fallback_reason": None, "rule": None, "guard": None, "latency_ms": 0.41, "stages": [], "late_answer": None,
            "hlc": f"{int(now * 1000)}-0000", "created_at": now,
            "lifecycle": {"stage": "prod", "release": "bench", "config_sha256": "0" * 64},
            "inputs": {"temperature_c": -12.5, "door_open_s": 130.0, "compressor_a": 5.2}}


def bench_log(mode: str, key: NodeKey, folder: Path, n: int, batch: int) -> float:
    """CPU µs per decision of the writer's audit-trail work, with no I/O wait."""
    conn = sqlite3.connect(folder / f"log-{mode}.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    migrate(conn)
    log = audit_log(mode, key)
    bodies = [{"decision_id": r["id"], "event_id": r["event_id"], "skill": r["skill"], "action": r["action"],
               "status": r["status"], "source": r["source"], "record_sha256": "0" * 64} for r in map(record, range(n))]
    t0 = time.process_time()
    for start in range(0, n, batch):
        conn.execute("BEGIN IMMEDIATE")
        log.reload(conn)
        for body in bodies[start : start + batch]:
            log.append(conn, "decision", body["decision_id"], body)
        if log.checkpoint_due:
            log.checkpoint(conn)
        conn.execute("COMMIT")
    elapsed = time.process_time() - t0
    conn.close()
    return elapsed / n * 1e6


async def bench_store(mode: str, key: NodeKey, folder: Path, n: int) -> tuple[float, float]:
    """(CPU µs per decision, CPU µs per record to verify) through the store, 256 decisions in flight."""
    every, interval = MODES[mode]
    data = folder / f"store-{mode}"
    store = Store(data_dir=data, key=key, node=NODE, synchronous="normal", checkpoint_every=every, checkpoint_interval_s=interval)
    if mode == "legacy":  # the writer's audit log swapped for the one before issue 15 (a bench may reach inside)
        store._audit = store._writer._audit = audit_log(mode, key)  # type: ignore[misc]
    sem = asyncio.Semaphore(256)

    async def one(i: int) -> None:
        async with sem:
            r = record(i)
            await store.record_decision(DecisionWrite(r["event_id"], r["skill"], r["created_at"], r["inputs"], r, NODE,
                                                      [(f"agentd/v1/f/nodes/{NODE}/decisions", canonical(r), 1, False)]))

    async with store:
        t0 = time.process_time()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.process_time() - t0
    conn = queries.open_readonly(data)
    t1 = time.process_time()
    result = queries.verify_audit(conn, trusted_key=key.public_b64)
    verify_us = (time.process_time() - t1) / max(result.records, 1) * 1e6
    conn.close()
    assert result.ok or mode == "legacy", result
    return elapsed / n * 1e6, verify_us


def bench_parts(key: NodeKey, folder: Path) -> dict[str, float]:
    """CPU µs of one checkpoint and one head reload, chained and legacy (best of 7 repeats of 200)."""
    out: dict[str, float] = {}
    for mode in ("legacy", "chained"):
        conn = sqlite3.connect(folder / f"parts-{mode}.db", isolation_level=None)
        conn.execute("PRAGMA synchronous=OFF")
        migrate(conn)
        log = audit_log(mode, key)
        log.reload(conn)
        conn.execute("BEGIN")
        for i in range(50):
            log.append(conn, "tick", None, {"i": i})
        sign, reload = [], []
        for _ in range(7):
            t0 = time.process_time()
            for i in range(200):
                log.append(conn, "tick", None, {"i": i})
                log.checkpoint(conn)
            both = time.process_time() - t0
            t0 = time.process_time()
            for i in range(200):
                log.append(conn, "tick", None, {"i": i})
            sign.append((both - (time.process_time() - t0)) / 200 * 1e6)
            t0 = time.process_time()
            for _ in range(200):
                log.reload(conn)
            reload.append((time.process_time() - t0) / 200 * 1e6)
        conn.execute("COMMIT")
        conn.close()
        out[f"{mode}_checkpoint_us"], out[f"{mode}_reload_us"] = round(min(sign), 1), round(min(reload), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16, help="decisions per commit in the audit-log measure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    log_us: dict[str, list[float]] = {m: [] for m in MODES}
    store_us: dict[str, list[float]] = {m: [] for m in MODES}
    verify_us: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(prefix="agentd-bench-cp-") as tmp:
        key = create_key(Path(tmp) / "key")[0]
        parts = bench_parts(key, Path(tmp))
        names = list(MODES)
        for r in range(-1, args.rounds):  # round -1 warms up and is not counted; each round starts at another mode
            for mode in names[r % len(names):] + names[: r % len(names)]:
                folder = Path(tmp) / f"r{r}"
                folder.mkdir(exist_ok=True)
                log = bench_log(mode, key, folder, args.decisions, args.batch)
                s, v = asyncio.run(bench_store(mode, key, folder, args.decisions))
                if r >= 0:
                    log_us[mode].append(log)
                    store_us[mode].append(s)
                    verify_us[mode].append(v)
    out = {m: {"audit_log_us": round(min(log_us[m]), 3), "store_us": round(min(store_us[m]), 2),
               "verify_us_per_record": round(min(verify_us[m]), 2)} for m in MODES}
    for m in MODES:
        out[m]["audit_log_overhead_us"] = round(out[m]["audit_log_us"] - out["none"]["audit_log_us"], 3)
        out[m]["store_overhead_us"] = round(out[m]["store_us"] - out["none"]["store_us"], 2)
    per_decision = {f"{m}_per_decision_us": round(parts[f"{m}_checkpoint_us"] / 1000 + (parts["chained_reload_us"] - parts["legacy_reload_us"]
                                                                                           if m == "chained" else 0) / args.batch, 3)
                    for m in ("legacy", "chained")}
    if args.json:
        print(json.dumps({"decisions": args.decisions, "rounds": args.rounds, "batch": args.batch, "parts": {**parts, **per_decision},
                          "modes": out}, indent=2))
        return
    print(f"one checkpoint: chained {parts['chained_checkpoint_us']} µs, legacy {parts['legacy_checkpoint_us']} µs;"
          f" one head reload: chained {parts['chained_reload_us']} µs, legacy {parts['legacy_reload_us']} µs")
    print(f"so per decision at checkpoint_every 1000 and {args.batch} decisions a commit: chained"
          f" {per_decision['chained_per_decision_us']} µs, legacy {per_decision['legacy_per_decision_us']} µs")
    print(f"{args.decisions} decisions, best of {args.rounds} rounds (CPU µs per decision; overhead against 'none')")
    print(f"{'mode':<12} {'audit log':>10} {'overhead':>9} {'store':>8} {'overhead':>9} {'verify/record':>14}")
    for m, v in out.items():
        print(f"{m:<12} {v['audit_log_us']:>10.3f} {v['audit_log_overhead_us']:>+9.3f} {v['store_us']:>8.2f}"
              f" {v['store_overhead_us']:>+9.2f} {v['verify_us_per_record']:>14.2f}")


if __name__ == "__main__":
    main()
