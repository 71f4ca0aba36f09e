"""The text stage beside the LLM stage on the same staff requests: accuracy and latency, one run.

    .venv/bin/python scripts/bench_text_vs_llm.py [--config config/agentd.yaml] [FILE.jsonl ...]

Both stages of the example's `operator_request` cascade (`request_text`, all-MiniLM-L6-v2
int8 nearest examples; `request_llm`, Gemma 3 270M Q4_K_M likelihood scoring) are loaded
as the daemon loads them and asked every request of each file, one at a time on their own
worker threads' code path (``predict``). Accuracy is each stage's top answer, gate or not;
latency is the wall time of each call (p50/p95), with the ratio LLM/text.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentd.config.loader import load_config  # noqa: E402
from agentd.stages.registry import build_stage  # noqa: E402
from agentd.stats import percentile  # noqa: E402

DEFAULT_SETS = ["eval/requests_handwritten.jsonl", "eval/requests_heldout.jsonl", "eval/in_distribution/requests_templates.jsonl"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "agentd.yaml")
    ap.add_argument("files", nargs="*", default=DEFAULT_SETS)
    args = ap.parse_args()
    cfg = load_config(args.config).config
    skill = cfg.skill("operator_request")
    for name in ("request_text", "request_llm"):
        stage_cfg = next(s for s in skill.cascade if s.model == name)
        stage = build_stage(cfg.model(name))
        never = threading.Event()
        for file in args.files:
            rows = [json.loads(line) for line in (ROOT / file).read_text().splitlines() if line.strip()]
            stage.predict(rows[0]["data"], never)  # warm-up: first-call allocations are not a decision's cost
            times, right = [], 0
            for r in rows:
                t = time.perf_counter()
                answer = stage.predict(r["data"], never)  # type: ignore[attr-defined]
                times.append((time.perf_counter() - t) * 1000)
                right += stage_cfg.map.get(answer.label, answer.label) == r["label"]
            print(json.dumps({"stage": name, "file": file, "items": len(rows), "accuracy": round(right / len(rows), 4),
                              "latency_ms_p50": round(percentile(times, 50), 2), "latency_ms_p95": round(percentile(times, 95), 2)}))
        stage._closing = True  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
