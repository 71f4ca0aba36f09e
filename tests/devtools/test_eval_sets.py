"""eval/in_distribution/ is written by scripts/make_eval_sets.py from agentd/devtools/labelled.py; it must match."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_in_distribution_sets_are_current() -> None:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_eval_sets.py"), "--check"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"{out.stdout}{out.stderr}"
