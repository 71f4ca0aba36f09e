"""`agentd bench`: figures for each decision path, with baselines measured in the same run.

Everything runs against a temporary data folder, never the node's own database.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.config.models import DelayModelConfig, OnnxModelConfig
from agentd.config.schema import StageConfig
from agentd.stages.base import CancelFlag
from agentd.stats import percentile

if TYPE_CHECKING:
    from agentd.config.loader import LoadedConfig
    from agentd.config.schema import Config, SkillConfig

PARTS = ("rules", "onnx", "deadline", "throughput", "footprint", "mqtt", "convergence", "llm", "accuracy")




def interleaved(baseline: Any, measured: Any, pairs: list[tuple[Any, Any]]) -> tuple[list[float], list[float]]:
    """Milliseconds of ``baseline(a)`` and ``measured(b)`` for each (a, b), alternating, so
    that both see the same machine noise."""
    base, meas = [], []
    for a, b in pairs:
        t = time.perf_counter()
        baseline(a)
        base.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        measured(b)
        meas.append((time.perf_counter() - t) * 1000)
    return base, meas


def run_bench(loaded: LoadedConfig, *, only: str | None = None, samples: int = 2000) -> dict[str, Any]:
    """Run the bench parts (or just ``only``) and return one flat dict of figures."""
    out: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    tmp = Path(tempfile.mkdtemp(prefix="agentd-bench-"))
    try:
        for part in PARTS:
            if only in (None, part):
                out.update(_PARTS[part](loaded, tmp / part, samples))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def bench_config(loaded: LoadedConfig, data_dir: Path, skill: SkillConfig | None = None, **skill_update: Any) -> LoadedConfig:
    """The config with one skill (default: the first with an ONNX stage), a temporary data folder and quiet logs."""
    cfg = loaded.config
    skill = (skill or bench_skill(cfg)).model_copy(update=skill_update)
    node = cfg.node.model_copy(update={"data_dir": str(data_dir)})
    daemon = cfg.daemon.model_copy(update={"socket": str(data_dir / "agentd.sock"), "log_level": "error"})
    new = cfg.model_copy(update={"node": node, "skills": [skill], "daemon": daemon})
    return replace(loaded, config=new)


def bench_skill(cfg: Config) -> SkillConfig:
    for s in cfg.skills:
        if any(isinstance(cfg.model(st.model), OnnxModelConfig) for st in s.cascade):
            return s
    return cfg.skills[0]


def _events(skill: SkillConfig, n: int) -> list[dict[str, Any]]:
    import random

    from agentd.daemon.sources import event_for

    rng = random.Random(42)
    return [event_for(skill, rng) for _ in range(n)]


async def with_engine(loaded: LoadedConfig, fn: Any) -> Any:
    from agentd.daemon.memory import settle_heap
    from agentd.decision.engine import Engine
    from agentd.mesh.wire import decision_wire
    from agentd.trust.keys import create_key

    key, _ = create_key(loaded.config.data_dir)
    async with Engine(loaded=loaded, key=key, run_handlers=False, outbound=decision_wire(loaded.config, key)) as engine:
        settle_heap()  # as the daemon does at READY
        return await fn(engine)


def _rules(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    bl = bench_config(loaded, data_dir, cascade=[])
    skill = bl.config.skills[0]
    events = _events(skill, samples)

    async def go(engine: Any) -> tuple[list[float], list[float]]:
        decided, persisted = [], []
        for e in events:
            t = time.perf_counter()
            r = await engine.decide(skill.name, e)
            persisted.append((time.perf_counter() - t) * 1000)
            decided.append(r["latency_ms"])
        return decided, persisted

    decided, persisted = asyncio.run(with_engine(bl, go))
    return {
        "rules_p50_ms": round(percentile(decided, 50), 4),
        "rules_p99_ms": round(percentile(decided, 99), 4),
        "rules_persisted_p50_ms": round(percentile(persisted, 50), 3),
        "rules_persisted_p99_ms": round(percentile(persisted, 99), 3),
    }


def _onnx(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    cfg = loaded.config
    skill = bench_skill(cfg)
    stage_cfg = next((s for s in skill.cascade if isinstance(cfg.model(s.model), OnnxModelConfig)), None)
    if stage_cfg is None:
        return {"onnx_note": "no ONNX stage in the config"}
    model_cfg = cfg.model(stage_cfg.model)
    assert isinstance(model_cfg, OnnxModelConfig)
    from agentd.stages.onnx import OnnxStage

    stage = OnnxStage(model_cfg)
    events = _events(skill, samples)
    rows = [stage.features(e) for e in events]
    never = CancelFlag()
    for x, e in zip(rows[:50], events[:50], strict=True):  # warm-up
        stage.run_raw(x)
        stage.predict(e, never)
    raw, inproc = interleaved(stage.run_raw, lambda e: stage.predict(e, never), list(zip(rows, events, strict=True)))

    async def via_worker() -> list[float]:
        out = []
        for e in events:
            t = time.perf_counter()
            await stage.call(e, time.monotonic() + 1).future
            out.append((time.perf_counter() - t) * 1000)
        await stage.close()
        return out

    called = asyncio.run(via_worker())
    raw50, st50, call50 = statistics.median(raw), statistics.median(inproc), statistics.median(called)
    return {
        "onnx_raw_p50_ms": round(raw50, 4),
        "onnx_p50_ms": round(st50, 4),
        "onnx_overhead_ratio": round(st50 / raw50, 3),
        "onnx_call_p50_ms": round(call50, 4),
        "onnx_call_ratio": round(call50 / raw50, 3),
    }


def _deadline(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    deadline_ms = 20.0
    slow = DelayModelConfig(name="bench_slow", backend="delay", delay_ms=deadline_ms * 5, label="none", circuit_failures=1000)  # keep the slow stage in play for every sample
    bl = bench_config(loaded, data_dir, cascade=[StageConfig(model="bench_slow")], deadline_ms=deadline_ms)
    bl = replace(bl, config=bl.config.model_copy(update={"models": [*bl.config.models, slow]}))
    skill = bl.config.skills[0]
    n = max(50, min(samples // 10, 300))
    events = _events(skill, n)

    async def go(engine: Any) -> tuple[list[float], list[float]]:
        total, decided = [], []
        for e in events:
            t = time.monotonic()
            r = await engine.decide(skill.name, e, received=t)
            total.append((time.monotonic() - t) * 1000)
            decided.append(r["latency_ms"])
        return total, decided

    # total: until the caller has the decision, durably committed; decided: until it was made.
    total, decided = asyncio.run(with_engine(bl, go))
    over = [t - deadline_ms for t in total]
    return {
        "deadline_ms": deadline_ms,
        "deadline_samples": n,
        "deadline_total_p50_ms": round(percentile(total, 50), 3),
        "deadline_overshoot_p99_ms": round(percentile(over, 99), 3),
        "deadline_overshoot_max_ms": round(max(over), 3),
        "deadline_adherence": round(sum(1 for t in total if t <= deadline_ms + 10) / n, 4),
        "deadline_decided_max_ms": round(max(decided), 3),
        "deadline_adherence_decided": round(sum(1 for t in decided if t <= deadline_ms + 10) / n, 4),
    }


def _throughput(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    """Three rounds on fresh databases (this machine's noise is large): median, min and max.

    With IN_HAND events in flight a decision waits behind hundreds of others, so some model
    calls are shed (``overloaded``, ``timeout``, then ``circuit_open``) and the rules decide
    them: ``throughput_shed`` counts those. The rounds with SHALLOW in hand keep every
    decision inside its deadline, so every stage is asked: the rate of decisions that ran it."""
    rounds = [_throughput_round(loaded, data_dir / f"round{i}", samples) for i in range(3)]
    rates = sorted(r["decisions_per_s"] for r in rounds)
    rules_only = [_throughput_round(loaded, data_dir / f"rules{i}", samples, cascade=[]) for i in range(3)]
    shallow = [_throughput_round(loaded, data_dir / f"shallow{i}", samples, in_hand=SHALLOW) for i in range(3)]
    return {
        f"decisions_per_s_in_hand_{SHALLOW}": sorted(r["decisions_per_s"] for r in shallow)[1],
        f"throughput_shed_in_hand_{SHALLOW}": sum(r["throughput_shed"] for r in shallow),
        "throughput_shed": sum(r["throughput_shed"] for r in rounds),
        "decisions_per_s_rules_only": sorted(r["decisions_per_s"] for r in rules_only)[1],
        "cpu_us_per_decision_rules_only": sorted(r["cpu_us_per_decision"] for r in rules_only)[1],
        "cpu_us_per_decision": sorted(r["cpu_us_per_decision"] for r in rounds)[1],
        "load_average": round(os.getloadavg()[0], 2),
        "decisions_per_s": rates[1],
        "decisions_per_s_min": rates[0],
        "decisions_per_s_max": rates[2],
        "throughput_events": sum(r["throughput_events"] for r in rounds),
        "throughput_stored": sum(r["throughput_stored"] for r in rounds),
        "throughput_commits": sum(r["throughput_commits"] for r in rounds),
        "throughput_lost": sum(r["throughput_lost"] for r in rounds),
    }


IN_HAND = 1000  # events in flight at once, like the MQTT peer bench's 1000 unacknowledged ones
SHALLOW = 200  # in flight in the rounds that keep every decision inside the example's 200 ms deadline


async def feed(engine: Any, skill: str, events: list[dict[str, Any]], in_hand: int = IN_HAND) -> None:
    """Decide ``events`` as the MQTT receiver takes them: a task for each, and with ``in_hand``
    of them undecided, no more until half are done (``ReadPause``'s bound)."""
    room = asyncio.Event()
    pending = 0

    async def one(i: int, e: dict[str, Any]) -> None:
        nonlocal pending
        try:
            await engine.decide(skill, e, event_id=f"bench-{i}")
        finally:
            pending -= 1
            if pending <= in_hand // 2:
                room.set()

    async with asyncio.TaskGroup() as tg:
        for i, e in enumerate(events):
            if pending >= in_hand:
                room.clear()
                await room.wait()
            pending += 1
            tg.create_task(one(i, e))


SHED = ("overloaded", "timeout", "circuit_open")  # fallbacks that load causes, not the model's answer


def _throughput_round(loaded: LoadedConfig, data_dir: Path, samples: int, *, in_hand: int | None = None,
                      **skill_update: Any) -> dict[str, Any]:
    bl = bench_config(loaded, data_dir, **skill_update)
    skill = bl.config.skills[0]
    n = max(2000, samples * 2)
    events = _events(skill, n)

    async def go(engine: Any) -> tuple[float, float, int, int, int]:
        commits0 = engine.store.commits
        t, cpu = time.perf_counter(), time.process_time()
        await feed(engine, skill.name, events, in_hand or IN_HAND)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        stored = await engine.store.read(lambda c: c.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])
        marks = ",".join("?" * len(SHED))
        shed = await engine.store.read(
            lambda c: c.execute(f"SELECT COUNT(*) FROM decisions WHERE fallback_reason IN ({marks})", SHED).fetchone()[0])
        return elapsed, cpu, stored, engine.store.commits - commits0, shed

    elapsed, cpu, stored, commits, shed = asyncio.run(with_engine(bl, go))
    return {
        "decisions_per_s": round(n / elapsed, 1),
        "cpu_us_per_decision": round(cpu / n * 1e6, 1),  # every thread of the process: less noisy than the rate on a shared box
        "throughput_events": n,
        "throughput_stored": stored,
        "throughput_commits": commits,
        "throughput_lost": n - stored,
        "throughput_shed": shed,
    }


def _footprint(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    """Start `agentd run` as a child, as configured and rules-only: seconds to READY=1 and RSS."""
    bl = bench_config(loaded, data_dir / "as-configured")
    daemon = bl.config.daemon.model_copy(update={"log_level": loaded.config.daemon.log_level})  # log volume as configured
    configured = start_child(replace(bl, config=bl.config.model_copy(update={"daemon": daemon})), idle_s=IDLE_S)
    rules_only = start_child(bench_config(loaded, data_dir / "rules-only", cascade=[]))
    return {
        "startup_s": configured["startup_s"], "rss_mb": configured["rss_mb"], "rss_rules_only_mb": rules_only["rss_mb"],
        **{k: v for k, v in configured.items() if k.startswith("idle_")},
    }


IDLE_S = 60.0  # how long the footprint part watches an idle daemon's writes


def _io_counters(pid: int) -> dict[str, int]:
    """/proc/PID/io: write syscalls (syscw), bytes written (wchar), bytes sent to the storage layer (write_bytes)."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return {"syscw": int(fields["syscw"]), "wchar": int(fields["wchar"]), "write_bytes": int(fields["write_bytes"])}


def start_child(bl: LoadedConfig, *, idle_s: float = 0.0) -> dict[str, float]:
    """Start `agentd run` as a child: seconds to READY=1, RSS after a second, and with ``idle_s``
    what it writes while idle (write syscalls, bytes to storage, log bytes), per minute."""
    import yaml

    data_dir = bl.config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    raw = bl.config.model_dump(mode="json", exclude_none=True)
    cfg_path = data_dir / "bench.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    # warm the key and database so start-up measures a restart, as on a box
    subprocess.run([sys.executable, "-m", "agentd.cli", "keys", "init", "--config", str(cfg_path)], check=True, capture_output=True)
    notify_path = data_dir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    log_path = data_dir / "daemon.log"
    t0 = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agentd.cli", "run", "--config", str(cfg_path)], env=env, stderr=log)
    out: dict[str, float] = {}
    try:
        while True:
            msg = sock.recv(4096).decode()
            if "READY=1" in msg:
                break
        out["startup_s"] = round(time.monotonic() - t0, 3)
        time.sleep(1.0)
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
        out["rss_mb"] = round(rss_kb / 1024, 1)
        if idle_s > 0:
            before, log_before = _io_counters(proc.pid), log_path.stat().st_size
            time.sleep(idle_s)
            after, log_after = _io_counters(proc.pid), log_path.stat().st_size
            per_min = 60.0 / idle_s
            out["idle_writes_per_min"] = round((after["syscw"] - before["syscw"]) * per_min, 1)
            out["idle_write_chars_per_min"] = round((after["wchar"] - before["wchar"]) * per_min)  # bytes handed to write()
            out["idle_write_bytes_per_min"] = round((after["write_bytes"] - before["write_bytes"]) * per_min)  # reached the disk
            out["idle_log_bytes_per_min"] = round((log_after - log_before) * per_min)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        sock.close()
    return out


def _mqtt(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    from agentd.devtools.bench_mesh import mqtt_part

    return mqtt_part(loaded, data_dir, samples)


def _convergence(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    from agentd.devtools.bench_mesh import convergence_part

    return convergence_part(loaded, data_dir, samples)


def _llm(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    from agentd.devtools.bench_llm import llm_part

    return llm_part(loaded, data_dir, samples)


def _accuracy(loaded: LoadedConfig, data_dir: Path, samples: int) -> dict[str, Any]:
    from agentd.devtools.bench_llm import accuracy_part

    return accuracy_part(loaded, data_dir, samples)


_PARTS = {"rules": _rules, "onnx": _onnx, "deadline": _deadline, "throughput": _throughput, "footprint": _footprint,
          "mqtt": _mqtt, "convergence": _convergence, "llm": _llm, "accuracy": _accuracy}
