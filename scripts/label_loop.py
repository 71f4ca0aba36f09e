"""The operator loop of docs/QUALITY.md, measured: decide, label, calibrate, and decide again.

    .venv/bin/python scripts/label_loop.py [--config config/agentd.yaml] [FILE.jsonl] [--skill operator_request]

A throw-away node (temporary data dir, the example config) decides the even lines of the
file, an "operator" labels each with the file's label (`Engine.label`, as `agentd label`
does), `calibrate` fits a temperature per model version, and the odd lines, which the
node never saw, are decided before, after the labels, and after calibration. Printed: accuracy and share asked on the
unseen half before and after, the text stage's examples, and each fit (ECE before/after,
held out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentd.config.loader import load_config  # noqa: E402
from agentd.decision.engine import Engine  # noqa: E402
from agentd.ops.evaluate import eval_config  # noqa: E402
from agentd.trust.keys import create_key  # noqa: E402


async def score(eng: Engine, rows: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    right = asked = 0
    for i, r in enumerate(rows):
        rec = await eng.decide(r["skill"], r["data"], event_id=f"{tag}-{i}")
        pending = rec["status"] == "pending_approval"
        act = rec["approval"]["requested_action"] if pending else rec["action"]
        right += act == r["label"]
        asked += pending
    return {"items": len(rows), "accuracy": round(right / len(rows), 4), "asked": round(asked / len(rows), 4)}


async def run(config: Path, data: Path, rows: list[dict[str, Any]], skill: str, deadline_ms: float) -> dict[str, Any]:
    rows = [r for r in rows if r["skill"] == skill]
    taught, unseen = rows[0::2], rows[1::2]
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
    return {"file": str(data), "skill": skill, "labelled": len(taught), "unseen_before": before, "unseen_after_labels": learnt,
            "unseen_after_calibration": after,
            "text_stage_examples": examples, "calibration": fits}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", type=Path, default=ROOT / "eval" / "requests_handwritten.jsonl")
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "agentd.yaml")
    ap.add_argument("--skill", default="operator_request")
    ap.add_argument("--deadline-ms", type=float, default=5000)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.file.read_text().splitlines() if line.strip()]
    print(json.dumps(asyncio.run(run(args.config, args.file, rows, args.skill, args.deadline_ms)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
