"""Where a decision's microseconds go, in-process: the throughput path of `agentd bench` under py-spy.

    .venv/bin/py-spy record --threads --rate 400 -f raw -o /tmp/p.txt -- \\
        .venv/bin/python scripts/profile_decision.py --rounds 3            # rules-only and with the ONNX stage
    .venv/bin/python scripts/profile_decision.py --fold /tmp/p.txt         # the profile as µs per decision
    .venv/bin/python scripts/profile_decision.py --parts                   # each step alone, µs per call
    .venv/bin/python scripts/profile_decision.py --threads                 # and each thread's CPU a decision

Run without py-spy it prints each round's decisions/s. ``--fold`` reads py-spy's raw
(collapsed) output and splits each thread's samples into the functions named in ``BUCKETS``
(the innermost listed frame wins), scaled to microseconds per decision with the elapsed
time and the decision count the run wrote to ``--stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

# (label, substring of a py-spy frame "function (file:line)"), innermost match wins
BUCKETS = [
    ("engine: validate_event", "validate_event ("),
    ("engine: stage call (ONNX hand-off)", "_run_stage ("),
    ("engine: CEL rules and guards", "first_match ("),
    ("engine: CEL rules and guards", "guarded ("),
    ("engine: CEL context", "make_context ("),
    ("engine: record (DecisionRecord, to_dict)", "to_dict ("),
    ("engine: canonical JSON of the record", "canonical (agentd/trust/canonical.py"),
    ("engine: Ed25519 signature (envelope)", "envelope_raw ("),
    ("engine: HLC", "now (agentd/trust/hlc.py"),
    ("engine: new_id", "new_id ("),
    ("engine: other in _decide", "_decide ("),
    ("engine: decide() wrapper (dedupe, future)", "decide (agentd/decision/engine.py"),
    ("asyncio: event loop, tasks, futures", "_run_once ("),
    ("writer: audit record (canonical, hash)", "append (agentd/state/audit_log.py"),
    ("writer: audit executemany", "batched (agentd/state/audit_log.py"),
    ("writer: checkpoint signature", "checkpoint (agentd/state/audit_log.py"),
    ("writer: write_decisions (SQL, json)", "write_decisions ("),
    ("writer: COMMIT (fsync)", "_run_batch ("),
    ("writer: back on the loop (_finish)", "_finish (agentd/state/writer.py"),
    ("onnx worker: InferenceSession.run", "run_raw ("),
    ("onnx worker: stage", "agentd/stages/onnx.py"),
]


def fold(raw: Path, stats: Path) -> None:
    """Print µs per decision per thread and bucket from a py-spy raw file and the run's stats."""
    st = json.loads(stats.read_text())
    rate = st["rate"]
    per_thread: dict[str, Counter[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        label = next((lab for frame in reversed(frames) for lab, sub in BUCKETS if sub in frame), "other")
        thread = frames[0].split(":")[0]  # "thread (id)": py-spy names a thread only on some samples
        per_thread.setdefault(thread, Counter())[label] += int(count)
    for name, part in st["parts"].items():
        print(f"\n{name}: {part['decisions']} decisions in {part['elapsed_s']:.2f} s ({part['decisions'] / part['elapsed_s']:,.0f}/s)")
    total_decisions = sum(p["decisions"] for p in st["parts"].values())
    for thread, c in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(c.values())
        print(f"\n{thread}: {n} samples, {n / rate / total_decisions * 1e6:.1f} µs per decision (sampled while not idle)")
        for label, k in c.most_common():
            print(f"  {k / rate / total_decisions * 1e6:8.1f} µs  {100 * k / n:5.1f} %  {label}")


def _thread_cpu() -> dict[str, float]:
    """CPU seconds (user and system) of each thread of this process, by its Python thread name."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        name = names.get(int(tid), f"native-{tid}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


async def _round(config: str, data_dir: Path, n: int, *, rules_only: bool) -> tuple[float, float, float, dict[str, float]]:
    from agentd.config.loader import load_config
    from agentd.devtools.bench import _events, bench_config, feed, with_engine

    loaded = load_config(config)
    bl = bench_config(loaded, data_dir, **({"cascade": []} if rules_only else {}))
    skill = bl.config.skills[0]
    events = _events(skill, n)

    async def go(engine: Any) -> tuple[float, float, float, dict[str, float]]:
        threads = _thread_cpu()
        t, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        await feed(engine, skill.name, events)
        await engine.store.flush()
        wall, cpu, loop_cpu = time.perf_counter() - t, time.process_time() - cpu, time.thread_time() - loop_cpu
        after = _thread_cpu()
        return wall, cpu, loop_cpu, {k: v - threads.get(k, 0.0) for k, v in after.items() if v - threads.get(k, 0.0) > 0}

    wall, cpu, loop_cpu, per_thread = await with_engine(bl, go)
    return float(wall), float(cpu), float(loop_cpu), per_thread


def time_parts(config: str, n: int = 2000) -> None:
    """Each step of a decision alone, on the example skill's events and records (µs per call, best of 5 runs of n)."""
    import timeit

    from agentd.config.loader import load_config
    from agentd.decision.fleet import FleetView
    from agentd.decision.rules import compile_all, first_match, guarded, make_context
    from agentd.decision.validate import validate_event
    from agentd.devtools.bench import _events, bench_config, with_engine
    from agentd.ids import new_id
    from agentd.mesh.wire import DecisionWire
    from agentd.trust.canonical import canonical
    from agentd.trust.hlc import Clock
    from agentd.trust.keys import create_key

    loaded = load_config(config)
    with tempfile.TemporaryDirectory(prefix="agentd-parts-") as tmp:
        records = {}
        for name, upd in (("rules-only", {"cascade": []}), ("onnx", {})):
            bl = bench_config(loaded, Path(tmp) / name, **upd)
            skill = bl.config.skills[0]
            ev = _events(skill, 1)[0]
            records[name] = asyncio.run(with_engine(bl, lambda engine, s=skill, e=ev: engine.decide(s.name, e)))
        key, _ = create_key(Path(tmp) / "key")
    skill = bench_config(loaded, Path("/nonexistent")).config.skills[0]
    events = _events(skill, n)
    rules = compile_all(loaded)[skill.name]
    fleet = FleetView()
    fields = validate_event(skill, events[0])
    ctx = make_context({**fields, "skill": skill.name, "node": "n", "action": ""}, fleet)
    wire = DecisionWire(fleet="f", node="n", key=key)
    clock = Clock()
    it = iter(events * 6)
    steps = [
        ("validate_event", lambda: validate_event(skill, next(it))),
        ("CEL context (make_context)", lambda: make_context({**fields, "skill": skill.name, "node": "n", "action": ""}, fleet)),
        ("rules (first_match)", lambda: first_match(rules.rules, ctx)),
        (f"guards ({len(rules.guards)}, guarded)", lambda: guarded(rules.guards, ctx, "none", [])),
        ("HLC", clock.now),
        ("new_id", new_id),
    ]
    batched: list[tuple[str, Any, int]] = []  # steps that take several events a call: (name, fn, events a call)
    onnx = next((m for m in loaded.config.models if getattr(m, "card", None) is not None), None)
    if onnx is not None:  # the input card's out-of-distribution check: on the ONNX stage's worker, a batch at a time
        import numpy as np

        from agentd.stages.card import InputCard

        card = InputCard.load(Path(onnx.card), onnx.inputs)
        checked = [validate_event(skill, e) for e in events]
        cit = iter(checked * 6)
        steps.append((f"input card check ({onnx.name}, {len(card.points)} reference rows), one event", lambda: card.check(next(cit))))
        rows = np.array([[float(e[f]) for f in card.inputs] for e in checked[:64]], dtype=np.float64)
        batched.append(("input card check, a batch of 64 (check_rows), per event", lambda: card.check_rows(rows), len(rows)))
    for name, rec in records.items():
        body = canonical(rec)
        steps += [(f"canonical JSON of the record, {name} ({len(body)} bytes)", lambda r=rec: canonical(r)),
                  (f"signed envelope (Ed25519), {name}", lambda r=rec, b=body: wire.decision_messages(r, b))]
    for name, fn, per_call in [(name, fn, 1) for name, fn in steps] + batched:
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n / per_call * 1e6
        print(f"{best:8.1f} µs  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/agentd.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--only", choices=("rules", "onnx"))
    ap.add_argument("--stats", type=Path, default=Path("/tmp/profile_decision.json"))
    ap.add_argument("--fold", type=Path, help="a py-spy raw file to summarise instead of running")
    ap.add_argument("--rate", type=int, default=400, help="py-spy's --rate of that file")
    ap.add_argument("--parts", action="store_true", help="time each step of a decision alone instead")
    ap.add_argument("--threads", action="store_true", help="print each thread's CPU a decision too (the loop, the writer, the stages' workers)")
    args = ap.parse_args()
    if args.parts:
        time_parts(args.config)
        return
    if args.fold:
        st = json.loads(args.stats.read_text())
        st["rate"] = args.rate
        args.stats.write_text(json.dumps(st))
        fold(args.fold, args.stats)
        return
    parts: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="agentd-profile-") as tmp:
        for name, rules_only in (("rules-only", True), ("onnx", False)):
            if args.only and (args.only == "rules") != rules_only:
                continue
            total, count = 0.0, 0
            for r in range(args.rounds):
                elapsed, cpu, loop_cpu, per_thread = asyncio.run(
                    _round(args.config, Path(tmp) / f"{name}{r}", args.events, rules_only=rules_only))
                print(f"{name} round {r}: {args.events / elapsed:,.0f} decisions/s, CPU {cpu / args.events * 1e6:.0f} µs a decision"
                      f" (event loop's thread {loop_cpu / args.events * 1e6:.0f} µs), load {os.getloadavg()[0]:.2f}", file=sys.stderr)
                if args.threads:  # the clock ticks are 10 ms: over a few thousand decisions, a few µs each
                    shares = ", ".join(f"{k} {v / args.events * 1e6:.0f}" for k, v in sorted(per_thread.items(), key=lambda kv: -kv[1]))
                    print(f"  CPU µs a decision by thread: {shares}", file=sys.stderr)
                total, count = total + elapsed, count + args.events
            parts[name] = {"decisions": count, "elapsed_s": total}
    args.stats.write_text(json.dumps({"parts": parts, "rate": args.rate}))


if __name__ == "__main__":
    main()
