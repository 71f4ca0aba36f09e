"""docs/CLI.md is generated from the CLI's own --help; it must not fall behind the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cli_reference_is_current() -> None:
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "cli_docs.py"), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, f"docs/CLI.md is stale: run .venv/bin/python scripts/cli_docs.py\n{out.stdout}{out.stderr}"
