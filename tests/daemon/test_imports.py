"""What a node without models loads."""

from __future__ import annotations

import subprocess
import sys


def test_the_daemon_and_cli_import_no_numerical_library_until_a_model_is_loaded() -> None:
    code = ("import sys, agentd.daemon.node, agentd.cli; "
            "print(sorted(m for m in ('numpy', 'onnxruntime', 'llama_cpp', 'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"  # numpy alone is 12 MB of a rules-only node's RSS
