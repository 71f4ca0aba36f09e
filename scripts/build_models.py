#!/usr/bin/env python3
"""Build the ``freezer_anomaly`` int8 ONNX model and its manifest, reproducibly.

Generating process (synthetic cold-chain freezer telemetry, one row per
monitoring interval; features are float32, in this order):

* ``temperature_c`` -- freezer air temperature in degrees C.
* ``door_open_s``   -- seconds the door was open during the interval (0..600).
* ``compressor_a``  -- compressor current in amperes.

Classes (index order is fixed) and priors 0.55 / 0.20 / 0.15 / 0.10:

0. ``normal``    -- temperature ~ N(-20, 1.2) plus 0.01 C per door second;
   door closed half the time, otherwise short openings ~ Exp(mean 30 s);
   compressor ~ N(5.0, 0.6) A.
1. ``door_open`` -- door open ~ LogNormal(median 110 s, sigma 0.7), clipped to
   15..600 s; temperature rises moderately, -20 + 0.02 C per door second
   + N(0, 1.5); compressor working hard ~ N(6.0, 0.8) A.
2. ``icing``     -- door closed or a brief opening ~ Exp(mean 8 s); compressor
   current high ~ U(6.5, 10) A; temperature drifts up slowly ~ N(-17, 2).
3. ``failure``   -- 65 % dead compressor, current |N(0.2, 0.3)| A; 35 %
   overcurrent spikes ~ U(10, 16) A; temperature well above -10, ~ N(-5, 4);
   door behaves like ``normal``.

Every feature then gets Gaussian sensor noise (0.3 C, 2 s, 0.15 A) and is
clipped to its physical range.  The class-conditional tails overlap
(e.g. a hard-working ``door_open`` compressor vs. mild ``icing``), so
held-out accuracy is realistic (~95 %) rather than perfect.

Pipeline: StandardScaler -> MLPClassifier(16, 16), trained on a stratified
75 % split, evaluated on the remaining 25 %.  Exported with skl2onnx (target
opset 17, trimmed by skl2onnx to the 16 the graph needs; ai.onnx.ml 1; no
ZipMap) and dynamically quantised to int8 weights with onnxruntime.  Only the
int8 model is written, next to a JSON manifest.

Usage: python scripts/build_models.py [--out models] [--seed 7] [--samples 6000]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from onnxruntime.quantization import QuantType, quantize_dynamic
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

NAME = "freezer_anomaly"
INPUTS = ["temperature_c", "door_open_s", "compressor_a"]
LABELS = ["normal", "door_open", "icing", "failure"]
PRIORS = [0.55, 0.20, 0.15, 0.10]
INPUT_NAME = "input"
TARGET_OPSET = {"": 17, "ai.onnx.ml": 1}


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return features ``X`` (n, 3) float32 and labels ``y`` (n,) int64."""
    rng = np.random.default_rng(seed)
    y = rng.choice(len(LABELS), size=n, p=PRIORS).astype(np.int64)
    temp = np.empty(n)
    door = np.empty(n)
    comp = np.empty(n)

    def short_door(m: int, mean_s: float) -> np.ndarray:
        return np.where(rng.random(m) < 0.5, 0.0, rng.exponential(mean_s, m))

    idx = y == 0  # normal
    m = int(idx.sum())
    door[idx] = short_door(m, 30.0)
    temp[idx] = rng.normal(-20.0, 1.2, m) + 0.01 * door[idx]
    comp[idx] = rng.normal(5.0, 0.6, m)

    idx = y == 1  # door_open
    m = int(idx.sum())
    door[idx] = np.clip(rng.lognormal(np.log(110.0), 0.7, m), 15.0, 600.0)
    temp[idx] = -20.0 + 0.02 * door[idx] + rng.normal(0.0, 1.5, m)
    comp[idx] = rng.normal(6.0, 0.8, m)

    idx = y == 2  # icing
    m = int(idx.sum())
    door[idx] = short_door(m, 8.0)
    temp[idx] = rng.normal(-17.0, 2.0, m)
    comp[idx] = rng.uniform(6.5, 10.0, m)

    idx = y == 3  # failure
    m = int(idx.sum())
    dead = rng.random(m) < 0.65
    door[idx] = short_door(m, 20.0)
    temp[idx] = rng.normal(-5.0, 4.0, m)
    comp[idx] = np.where(dead, np.abs(rng.normal(0.2, 0.3, m)), rng.uniform(10.0, 16.0, m))

    temp += rng.normal(0.0, 0.3, n)
    door = np.clip(door + rng.normal(0.0, 2.0, n), 0.0, 600.0)
    comp = np.clip(comp + rng.normal(0.0, 0.15, n), 0.0, None)
    X = np.column_stack([temp, door, comp]).astype(np.float32)
    return X, y


def train(X: np.ndarray, y: np.ndarray, seed: int) -> Pipeline:
    """Fit StandardScaler + small MLP."""
    clf = MLPClassifier(hidden_layer_sizes=(16, 16), alpha=1e-3, max_iter=600,
                        random_state=seed)
    pipe = Pipeline([("scaler", StandardScaler()), ("mlp", clf)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(X, y)
    return pipe


def export_float(pipe: Pipeline, path: Path) -> None:
    """Convert the pipeline to a float32 ONNX model without ZipMap."""
    model = convert_sklearn(
        pipe,
        name=NAME,
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(INPUTS)]))],
        options={id(pipe.steps[-1][1]): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    # skl2onnx emits opset_import in hash-seed-dependent order; sort it so
    # the bytes (and the manifest's sha256) do not depend on PYTHONHASHSEED.
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets)
    onnx.save_model(model, str(path))


def session(path: Path, threads: int = 0) -> ort.InferenceSession:
    """CPU inference session (``threads=0`` keeps ORT's default)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def prob_output(sess: ort.InferenceSession) -> str:
    """Name of the float probability output (the other one is the label)."""
    for out in sess.get_outputs():
        if out.type == "tensor(float)":
            return out.name
    raise RuntimeError("no float probability output in model")


def predict(sess: ort.InferenceSession, X: np.ndarray) -> np.ndarray:
    """Arg-max class index of the probability output."""
    probs = sess.run([prob_output(sess)], {INPUT_NAME: X})[0]
    return np.asarray(probs).argmax(axis=1)


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Confusion matrix, rows = true label, columns = predicted label."""
    k = len(LABELS)
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def latency_us(sess: ort.InferenceSession, row: np.ndarray, runs: int = 2000) -> float:
    """Median wall time in microseconds of ``sess.run`` on one row."""
    feed = {INPUT_NAME: row}
    for _ in range(50):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_card(X_tr: np.ndarray, out: Path, seed: int) -> Path:
    """The model's input card (agentd.stages.card) from its training rows: the out-of-distribution gate."""
    from agentd.stages.card import build_card

    card = build_card([dict(zip(INPUTS, map(float, row), strict=True)) for row in X_tr], INPUTS, model=NAME, seed=seed)
    path = out / f"{NAME}.card.json"
    path.write_text(json.dumps(card, separators=(",", ":")) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("models"))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--samples", type=int, default=6000)
    args = ap.parse_args()

    X, y = generate(args.samples, args.seed)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=args.seed)
    pipe = train(X_tr, y_tr, args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    int8_path = args.out / f"{NAME}.int8.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / f"{NAME}.float.onnx"
        export_float(pipe, float_path)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # silence the "consider pre-processing" hint
        try:
            quantize_dynamic(str(float_path), str(int8_path), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        acc_float = float((predict(session(float_path), X_te) == y_te).mean())

    sess = session(int8_path)
    pred = predict(sess, X_te)
    acc_int8 = float((pred == y_te).mean())
    out_name = prob_output(sess)
    digest = sha256(int8_path)

    manifest = {
        "name": NAME,
        "version": "1",
        "backend": "onnx",
        "file": int8_path.name,
        "sha256": digest,
        "inputs": INPUTS,
        "input_name": INPUT_NAME,
        "output_name": out_name,
        "labels": LABELS,
        "accuracy": {"float": round(acc_float, 4), "int8": round(acc_int8, 4)},
        "seed": args.seed,
        "samples": args.samples,
        "built_with": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "skl2onnx": skl2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
    }
    (args.out / f"{NAME}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_card(X_tr, args.out, args.seed)

    print(f"samples={args.samples} seed={args.seed} train={len(y_tr)} test={len(y_te)}")
    print(f"held-out accuracy float={acc_float:.4f} int8={acc_int8:.4f}")
    print("int8 confusion matrix (rows=true, cols=predicted):")
    print(" " * 10 + "".join(f"{lab:>10}" for lab in LABELS))
    for lab, row in zip(LABELS, confusion(y_te, pred), strict=True):
        print(f"{lab:>10}" + "".join(f"{v:>10d}" for v in row))
    print(f"outputs: {[o.name for o in sess.get_outputs()]} (probabilities: {out_name})")
    print(f"model: {int8_path} {int8_path.stat().st_size} bytes sha256={digest}")
    one_row = X_te[:1]
    print(f"one-row sess.run median over 2000: {latency_us(session(int8_path, 1), one_row):.1f} us"
          f" (1 thread), {latency_us(sess, one_row):.1f} us (default threads)")


if __name__ == "__main__":
    main()
