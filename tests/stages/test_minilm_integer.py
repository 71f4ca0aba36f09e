"""scripts/get_minilm.py: the packaged MiniLM copied and verified, and the integer-matmul model derived from it.

Real files, real ONNX Runtime: the derived model must hold the packaged int8 weights (no
float32 copy of them), be reproduced byte for byte, and embed as the packaged one does.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from tests.conftest import MINILM, MODELS

ROOT = MODELS.parent
SCRIPT = ROOT / "scripts" / "get_minilm.py"
PACKAGED = MODELS / "all-MiniLM-L6-v2.int8.onnx"
DERIVED = Path(MINILM["path"])
TEXTS = ["the freezer door was left open overnight", "compressor is smoking and smells of burning",
         "we ran out of gloves in bay 3", "all fine, routine check", "ice build-up on the evaporator coils",
         "someone fainted near the loading dock", "delivery being unloaded, door propped"]
SHORT = ["ok", ".", "!!!", "- - - - -", "----------"]  # the review's worst cases: 0.98-0.99


def get_minilm() -> Any:
    spec = importlib.util.spec_from_file_location("get_minilm", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(folder)], capture_output=True, text=True, check=False)


def embed(path: Path, texts: list[str]) -> np.ndarray:
    """Mean-pooled, normalised sentence vectors from one plain session (not the stage: both files side by side)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(MINILM["tokenizer"])
    tok.enable_padding()
    tok.enable_truncation(128)
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    hidden = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    v = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True))


def test_the_script_copies_derives_and_verifies_into_a_new_folder(tmp_path: Path) -> None:
    first = run_script(tmp_path)
    assert first.returncode == 0, first.stderr
    assert "derived from all-MiniLM-L6-v2.int8.onnx, SHA-256 verified" in first.stdout
    assert (tmp_path / DERIVED.name).read_bytes() == DERIVED.read_bytes()
    again = run_script(tmp_path)
    assert again.returncode == 0 and again.stdout.count("present and verified") == 3


def test_a_damaged_derived_file_is_derived_again(tmp_path: Path) -> None:
    assert run_script(tmp_path).returncode == 0
    out = tmp_path / DERIVED.name
    out.write_bytes(out.read_bytes()[:-10] + b"0123456789")
    fixed = run_script(tmp_path)
    assert fixed.returncode == 0 and "wrote" in fixed.stdout
    assert out.read_bytes() == DERIVED.read_bytes()


def test_the_derived_model_computes_with_the_packaged_int8_weights() -> None:
    derived, packaged = onnx.load(DERIVED), onnx.load(PACKAGED)
    ops = [n.op_type for n in derived.graph.node]
    assert ops.count("MatMulInteger") == 36 and ops.count("MatMul") == 12  # the attention products (activations only) stay float
    floats = sum(int(np.prod(i.dims)) for i in derived.graph.initializer if i.data_type == TensorProto.FLOAT)
    assert floats < 200_000  # scales, biases and norms; the 22.5 M weights stay 8-bit
    int8 = {i.name for i in derived.graph.initializer if i.data_type == TensorProto.INT8}
    # nothing turns an int8 weight into float (ONNX Runtime would fold it into a float32 copy at load) ...
    assert not [n.input[0] for n in derived.graph.node if n.op_type == "Cast" and n.input[0] in int8]
    # ... and the word and position tables are gathered as int8 (the review's mutation: float tables, +47 MB)
    gathered = [n.input[0] for n in derived.graph.node if n.op_type == "Gather"]
    assert {"inner.embeddings.word_embeddings.weight_q", "inner.embeddings.position_embeddings.weight_q"} <= set(gathered) & int8
    want = {i.name: onnx.numpy_helper.to_array(i) for i in packaged.graph.initializer if i.data_type == TensorProto.INT8}
    got = {i.name: onnx.numpy_helper.to_array(i) for i in derived.graph.initializer}
    for name, w in want.items():
        if name + "_u8" in got:  # matrix weights: shifted to uint8 around the zero point 128
            assert np.array_equal(got[name + "_u8"].astype(np.int16) - 128, w)
        else:  # embedding tables: as packaged
            assert np.array_equal(got[name], w)


def test_the_derived_model_embeds_as_the_packaged_one() -> None:
    a, b = embed(PACKAGED, TEXTS), embed(DERIVED, TEXTS)
    cosine = (a * b).sum(1)
    assert cosine.min() > 0.99, cosine
    short = (embed(PACKAGED, SHORT) * embed(DERIVED, SHORT)).sum(1)
    assert short.min() > 0.98, short
    # the same nearest neighbour for every text among the others
    for i in range(len(TEXTS)):
        others = [j for j in range(len(TEXTS)) if j != i]
        assert max(others, key=lambda j: a[i] @ a[j]) == max(others, key=lambda j: b[i] @ b[j])


def test_a_derived_file_that_is_not_the_pinned_one_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    script = get_minilm()
    (tmp_path / PACKAGED.name).symlink_to(PACKAGED)
    monkeypatch.setattr(script, "DERIVED", {DERIVED.name: (PACKAGED.name, "f" * 64)})
    assert script.derive_files(tmp_path) == 1
    assert "expected " + "f" * 64 + "; not written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [PACKAGED.name]  # neither the file nor its .part


def test_a_copy_that_is_not_the_pinned_one_is_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    script = get_minilm()
    name, (package, inner, _) = next(iter(script.FILES.items()))
    monkeypatch.setattr(script, "FILES", {name: (package, inner, "e" * 64)})
    assert script.copy_files(tmp_path) == 1
    assert "expected " + "e" * 64 + "; not copied" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_model_other_than_the_packaged_minilm_is_refused() -> None:
    with pytest.raises(ValueError, match="not the packaged MiniLM-L6: found"):
        get_minilm().integer_matmuls(onnx.load(MODELS / "freezer_anomaly.int8.onnx"))
