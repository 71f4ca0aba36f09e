"""The quality tables of docs/BENCHMARKS.md: `agentd eval` on every labelled set, summarised.

    .venv/bin/python scripts/quality_tables.py [--config config/agentd.yaml] [--deadline-ms 5000]

For each set and path: coverage, accuracy, ECE, AURC, risk at 50 % and 80 % coverage, the
share sent to a human and the share the rules alone would not have sent; for each model
stage with an out-of-distribution gate, what the gate held back; for the request skill,
the emergencies that ended as `ignore` without a human. Also the four reference threshold
rules of scripts/peer_bench_node.sh on the freezer sets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SETS = [  # (file, kind): independent sets first, then the in-distribution ones
    ("eval/freezer_physics.jsonl", "independent"), ("eval/freezer_handwritten.jsonl", "independent"),
    ("eval/in_distribution/freezer_simulator.jsonl", "in-distribution"),
    ("eval/requests_handwritten.jsonl", "independent, development set since session 5"),
    ("eval/requests_heldout.jsonl", "held out, never tuned on"),
    ("eval/in_distribution/requests_templates.jsonl", "in-distribution"),
]
REFERENCE_RULES = [  # scripts/peer_bench_node.sh
    {"name": "dead_and_warm", "when": "temperature_c > 0.0 && compressor_a < 0.5", "action": "shutdown"},
    {"name": "warm", "when": "temperature_c > -10.0", "action": "alert"},
    {"name": "door_open", "when": "door_open_s > 300.0", "action": "alert"},
    {"name": "icing", "when": "compressor_a > 8.0", "action": "defrost"},
    {"name": "ok", "default": True, "action": "none"},
]


def run_eval(config: Path, data: Path, deadline_ms: float) -> dict[str, Any]:
    out = subprocess.run([str(ROOT / ".venv/bin/agentd"), "eval", "--config", str(config), str(data), "--json", "--items",
                          "--deadline-ms", str(deadline_ms)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["skills"][0]


def reference_config(config: Path, folder: Path) -> Path:
    """The example config with the freezer skill's rules replaced by the four reference rules, no models."""
    raw = yaml.safe_load(config.read_text())
    base = config.resolve().parent
    raw["node"]["data_dir"] = str(folder / "data")
    for m in raw["models"]:
        for k in ("path", "card", "tokenizer"):
            if k in m:
                m[k] = str((base / m[k]).resolve())
    skill = next(s for s in raw["skills"] if s["name"] == "freezer_health")
    skill.update(cascade=[], rules=REFERENCE_RULES, guards=[])
    path = folder / "reference.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def risk_at(path: dict[str, Any], coverage: float) -> str:
    rc = path.get("risk_coverage")
    if not rc:
        return "-"
    point = next((p for p in rc["points"] if abs(p["coverage"] - coverage) < 1e-9), None)
    return "-" if point is None else pct(point["risk"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "agentd.yaml")
    ap.add_argument("--deadline-ms", type=float, default=5000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ref = reference_config(args.config, Path(tmp))
        for name, kind in SETS:
            s = run_eval(args.config, ROOT / name, args.deadline_ms)
            print(f"\n#### {name} ({kind}, {s['items']} items, skill {s['skill']})\n")
            print("| path | coverage | accuracy | ECE | AURC | risk @50 % | risk @80 % | asked | asked, not by the rules |")
            print("|---|---|---|---|---|---|---|---|---|")
            for p in s["paths"]:
                cal = p.get("calibration")
                rc = p.get("risk_coverage")
                extra = p.get("asked_not_by_rules")
                print(f"| {p['path']} | {pct(p['coverage'])} | {pct(p['accuracy'])} | {'-' if not cal else cal['ece']} |"
                      f" {'-' if not rc else rc['aurc']} | {risk_at(p, 0.5)} | {risk_at(p, 0.8)} |"
                      f" {pct(p['asked']['share']) if p.get('asked') else '-'} | {pct(extra['share']) if extra else '-'} |")
            if s["skill"] == "freezer_health":
                r = run_eval(ref, ROOT / name, args.deadline_ms)
                rules = next(p for p in r["paths"] if p["path"] == "rules")
                print(f"| reference threshold rules | {pct(rules['coverage'])} | {pct(rules['accuracy'])} | - | - | - | - | - | - |")
            for p in s["paths"]:
                if not p["path"].startswith("stage:"):
                    continue
                held = [r for r in s["results"] if r["paths"][p["path"]].get("outcome") == "out_of_distribution"]
                if held:
                    wrong = [r for r in held if r["paths"][p["path"]]["predicted"] != r["label"]]
                    sure = [r for r in wrong if (r["paths"][p["path"]]["confidence"] or 0) >= (p.get("min_confidence") or 0)]
                    print(f"\n{p['path']}: the out-of-distribution gate held back {len(held)} answers; {len(wrong)} of them"
                          f" were wrong, {len(sure)} of those confidently (at or above min_confidence {p.get('min_confidence')}).")
            if s["skill"] == "operator_request":
                lost = [r for r in s["results"] if r["label"] == "escalate" and r["paths"]["cascade"]["predicted"] == "ignore"
                        and not r["paths"]["cascade"]["asked"]]
                via = [r for r in lost if r["paths"]["cascade"].get("source") == "rules"]
                print(f"\nemergencies (label escalate) that ended as ignore without a human: {len(lost)}, {len(via)} of them through a fallback to the rules.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
