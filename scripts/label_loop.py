"""The operator loop of docs/QUALITY.md, measured: decide, label, calibrate, and decide again.

    .venv/bin/python scripts/label_loop.py [--config config/agentd.yaml] [FILE.jsonl] [--skill operator_request]
    .venv/bin/python scripts/label_loop.py --teach A.jsonl [--teach B.jsonl ...] --test HELDOUT.jsonl

A throw-away node (temporary data dir, the example config) decides the even lines of the
file, an "operator" labels each with the file's label (`Engine.label`, as `agentd label`
does), `calibrate` fits a temperature per model version, and the odd lines, which the
node never saw, are decided before, after the labels, and after calibration. Printed: accuracy and share asked on the
unseen half before and after, the text stage's examples, and each fit (ECE before/after,
held out).

With ``--teach`` and ``--test`` every line of the teach files is labelled and the test file
(which neither the node nor the fit saw) is the unseen set. For each model stage the
unseen set's calibration is printed too: the stage's own confidence against whether its
answer was right, on every unseen item it answered, before the labels, after them and after
calibration (ECE over 10 bins, with a 90 % bootstrap interval).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentd.config.loader import load_config  # noqa: E402
from agentd.decision.engine import Engine  # noqa: E402
from agentd.decision.quality import calibration  # noqa: E402
from agentd.ops.evaluate import eval_config  # noqa: E402
from agentd.trust.keys import create_key  # noqa: E402


def ece_interval(scored: list[tuple[float, bool]], rounds: int = 1000) -> dict[str, Any]:
    """ECE of ``scored`` and a 90 % bootstrap interval (seeded: the same run prints the same figures)."""
    rng = random.Random(7)
    cal = calibration(scored)
    boot = sorted(c.ece for _ in range(rounds) if (c := calibration([rng.choice(scored) for _ in scored])) is not None)
    return {"n": len(scored), "ece": round(cal.ece, 4) if cal else None,
            "ece_90": [round(boot[int(0.05 * len(boot))], 4), round(boot[int(0.95 * len(boot)) - 1], 4)] if boot else None}


async def score(eng: Engine, rows: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    right = asked = 0
    stages: dict[str, list[tuple[float, bool]]] = {}
    for i, r in enumerate(rows):
        rec = await eng.decide(r["skill"], r["data"], event_id=f"{tag}-{i}")
        pending = rec["status"] == "pending_approval"
        act = rec["approval"]["requested_action"] if pending else rec["action"]
        right += act == r["label"]
        asked += pending
        for t in rec.get("stages") or []:
            if t.get("confidence") is not None and t.get("action") is not None:
                stages.setdefault(t["model"], []).append((float(t["confidence"]), t["action"] == r["label"]))
    return {"items": len(rows), "accuracy": round(right / len(rows), 4), "asked": round(asked / len(rows), 4),
            "stage_calibration": {m: ece_interval(v) for m, v in sorted(stages.items())}}


async def run(config: Path, data: str, taught: list[dict[str, Any]], unseen: list[dict[str, Any]], skill: str,
              deadline_ms: float) -> dict[str, Any]:
    taught, unseen = [r for r in taught if r["skill"] == skill], [r for r in unseen if r["skill"] == skill]
    with tempfile.TemporaryDirectory() as tmp:
        loaded = eval_config(load_config(config), Path(tmp) / "data", deadline_ms=deadline_ms)  # as agentd eval runs a skill
        key = create_key(loaded.config.data_dir)[0]
        async with Engine(loaded=loaded, key=key, run_handlers=False) as eng:
            before = await score(eng, unseen, "before")
            for i, r in enumerate(taught):
                rec = await eng.decide(skill, r["data"], event_id=f"taught-{i}")
                await eng.label(rec["id"], r["label"], by="operator")
            learnt = await score(eng, unseen, "learnt")
            fits = await eng.calibrate(by="operator", skill_name=skill, min_labels=20)
            after = await score(eng, unseen, "after")
            examples = {n: getattr(s, "example_count", None) for n, s in eng.stages.items() if getattr(s, "learns", False)}
    return {"file": data, "skill": skill, "labelled": len(taught), "unseen_before": before, "unseen_after_labels": learnt,
            "unseen_after_calibration": after,
            "text_stage_examples": examples, "calibration": fits}


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", type=Path, default=ROOT / "eval" / "requests_handwritten.jsonl")
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "agentd.yaml")
    ap.add_argument("--skill", default="operator_request")
    ap.add_argument("--deadline-ms", type=float, default=5000)
    ap.add_argument("--teach", type=Path, action="append", default=[], help="label every line of this file (repeatable)")
    ap.add_argument("--test", type=Path, help="the unseen set (with --teach)")
    args = ap.parse_args()
    if bool(args.teach) != bool(args.test):
        ap.error("--teach and --test go together")
    if args.test:
        taught = [row for f in args.teach for row in read(f)]
        unseen, name = read(args.test), f"taught {', '.join(map(str, args.teach))}; unseen {args.test}"
    else:
        rows = read(args.file)
        taught, unseen, name = rows[0::2], rows[1::2], str(args.file)
    print(json.dumps(asyncio.run(run(args.config, name, taught, unseen, args.skill, args.deadline_ms)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
