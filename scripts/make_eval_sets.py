"""Write the in-distribution labelled sets of eval/ in the `agentd eval` format (run: .venv/bin/python scripts/make_eval_sets.py).

They come from agentd/devtools/labelled.py, the way the example models were built (the
simulator's freezer conditions, the request phrase templates), so they show how the
skills do on data like their training data; the other sets under eval/ are drawn
independently and show how they do on data they never saw. Fixed seeds: rerunning writes
the same files. Pass --check to exit 1 when a file is out of date instead of writing it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from agentd.devtools.labelled import freezer_events, operator_requests

OUT = Path(__file__).resolve().parent.parent / "eval" / "in_distribution"


def lines(skill: str, prefix: str, items: list[tuple[dict[str, Any], str]]) -> str:
    """One JSON object a line: id, skill, data, label."""
    width = len(str(len(items)))
    return "".join(
        json.dumps({"id": f"{prefix}-{n:0{width}d}", "skill": skill, "data": data, "label": label}, ensure_ascii=False) + "\n"
        for n, (data, label) in enumerate(items, 1)
    )


def render() -> dict[Path, str]:
    return {
        OUT / "freezer_simulator.jsonl": lines("freezer_health", "sim", freezer_events()),
        OUT / "requests_templates.jsonl": lines("operator_request", "tpl", operator_requests()),
    }


if __name__ == "__main__":
    files = render()
    if "--check" in sys.argv:
        stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
        for p in stale:
            print(f"{p} is out of date: run .venv/bin/python scripts/make_eval_sets.py")
        sys.exit(1 if stale else 0)
    OUT.mkdir(parents=True, exist_ok=True)
    for p, text in files.items():
        p.write_text(text)
        print(f"wrote {p} ({text.count(chr(10))} items)")
