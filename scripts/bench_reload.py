"""How long a reload takes with Gemma 3 270M loaded, and what it reloads.

Starts `agentd run` (no broker) on the example's freezer skill (ONNX) and request skill
(Gemma 3 270M through llama.cpp), then times N reloads over the local socket, each after
changing only a rule, and reports the model loads the audit trail shows. Run it against
another checkout with --tree (e.g. a `git worktree` of an older commit) to compare:

    .venv/bin/python scripts/bench_reload.py --reloads 10
    git worktree add /tmp/before <commit> && .venv/bin/python scripts/bench_reload.py --tree /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from agentd.control.client import request
from agentd.errors import AgentdError

REPO = Path(__file__).resolve().parents[1]


def config(data: Path) -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "config" / "agentd.yaml").read_text())
    models = []
    for m in raw["models"]:
        if m["backend"] in ("onnx", "llama_cpp"):
            models.append({**m, "path": str((REPO / "config" / m["path"]).resolve())})
    names = {m["name"] for m in models}
    skills = [s for s in raw["skills"] if all(st["model"] in names for st in s.get("cascade", []))]
    return {**{k: v for k, v in raw.items() if k in ("lifecycle", "trust")}, "node": {"id": "reload-bench", "fleet": "bench", "data_dir": str(data)},
            "mqtt": {"enabled": False}, "models": models, "skills": skills}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reloads", type=int, default=10)
    ap.add_argument("--tree", type=Path, default=REPO, help="the checkout whose agentd runs (default: this one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        cfg = config(data)
        if not any(m["backend"] == "llama_cpp" for m in cfg["models"]):
            sys.exit("the example's LLM model is not usable here (models/gemma-3-270m-q4_k_m.gguf; run scripts/setup.sh)")
        path = Path(tmp) / "agentd.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "PYTHONPATH": str(args.tree.resolve())}
        log = open(Path(tmp) / "daemon.log", "wb")  # noqa: SIM115 - the child writes it
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "agentd.cli", "run", "--config", str(path)], cwd=args.tree, env=env, stderr=log)
        sock = data / "agentd.sock"
        try:
            while True:
                try:
                    request(sock, {"op": "ping"}, timeout_s=2)
                    break
                except AgentdError:
                    pass
                if proc.poll() is not None or time.monotonic() - t0 > 180:
                    sys.exit(f"the daemon did not start; see {log.name}")
                time.sleep(0.05)
            start_s = time.monotonic() - t0
            times = []
            for i in range(args.reloads):
                skill = cfg["skills"][0]
                skill["rules"][0]["name"] = f"{skill['rules'][0]['name'].split('~')[0]}~{i}"  # only a rule changes
                path.write_text(yaml.safe_dump(cfg))
                t = time.monotonic()
                reply = request(sock, {"op": "reload"}, timeout_s=120)
                times.append((time.monotonic() - t) * 1000)
                assert reply.get("reloaded"), reply
        finally:
            proc.terminate()
            proc.wait(60)
        export = subprocess.run([sys.executable, "-m", "agentd.cli", "audit", "export", "--config", str(path)],
                                cwd=args.tree, env=env, capture_output=True, text=True, check=True)
        loads = [json.loads(line)["body"]["model"] for line in export.stdout.splitlines() if '"kind": "model_load"' in line or '"kind":"model_load"' in line]
        commit = subprocess.run(["git", "-C", str(args.tree), "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True).stdout.strip()
        result = {
            "tree": str(args.tree), "commit": commit, "reloads": args.reloads, "startup_to_socket_s": round(start_s, 2),
            "reload_ms_p50": round(statistics.median(times), 1), "reload_ms_max": round(max(times), 1),
            "model_loads": len(loads), "model_loads_per_reload": round((len(loads) - len(cfg["models"])) / args.reloads, 2),
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
