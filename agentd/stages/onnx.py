"""The ONNX Runtime stage: one InferenceSession per model file, SHA-256 verified at load."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentd.errors import ModelError
from agentd.stages.base import CancelFlag, Cancelled, StageAnswer, ThreadedStage, softmax_top
from agentd.stages.card import InputCard
from agentd.stages.loading import check_memory, verify_file

if TYPE_CHECKING:
    from agentd.config.models import OnnxModelConfig


# Live sessions by (file, SHA-256, threads): stages on the same model file share one. Loading
# folds a weight-only int8 model's weights back to float32 (MiniLM: 23 MB on disk, about 160 MB
# loaded), so the example's two text stages cost one model, not two. ``run`` may be called from
# several threads at once (ONNX Runtime's contract), which is what two stages' workers do.
_SESSIONS: weakref.WeakValueDictionary[tuple[str, str, int], Any] = weakref.WeakValueDictionary()
_SESSIONS_LOCK = threading.Lock()


def onnx_session(name: str, path: Path, sha256: str, *, threads: int, headroom_mb: float, working_mb: int) -> tuple[Any, Any]:
    """A verified, memory-checked ONNX Runtime session on the CPU, and the onnxruntime module.

    A session already loaded from the same verified file with the same threads is shared."""
    verify_file(path, sha256, what=f"model {name!r}")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelError(f"model {name!r}: onnxruntime is not installed ({exc})") from exc
    key = (str(path.resolve()), sha256.lower(), threads)
    with _SESSIONS_LOCK:  # loads one at a time: a memory check must not race another load
        shared = _SESSIONS.get(key)
        if shared is not None:
            return shared, ort
        session = _load(name, path, threads=threads, headroom_mb=headroom_mb, working_mb=working_mb, ort=ort)
        _SESSIONS[key] = session
        return session, ort


def _load(name: str, path: Path, *, threads: int, headroom_mb: float, working_mb: int, ort: Any) -> Any:
    size = path.stat().st_size
    check_memory(name, size, working_bytes=3 * size + working_mb * 2**20, headroom_mb=headroom_mb)
    if hasattr(ort, "disable_telemetry_events"):
        ort.disable_telemetry_events()  # no device id written under the state directory
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"model {name!r}: onnxruntime cannot load {path}: {exc}") from exc


class OnnxStage(ThreadedStage):
    """Builds the input row from named event fields in the declared order; answers the label distribution.

    Calls queued together run as one batch tensor (one ``InferenceSession.run``).
    """

    max_batch = 64

    def __init__(self, cfg: OnnxModelConfig) -> None:
        import numpy as np

        self._session, ort = onnx_session(cfg.name, Path(cfg.path), cfg.sha256, threads=cfg.threads,
                                          headroom_mb=cfg.memory_headroom_mb, working_mb=16)
        super().__init__(name=cfg.name, version=cfg.version, sha256=cfg.sha256, labels=tuple(cfg.labels))
        self._np = np
        self._ort = ort
        self._fields = tuple(cfg.inputs)
        self.input_name = cfg.input_name or self._session.get_inputs()[0].name
        self.output_name = cfg.output_name or self._find_prob_output(len(cfg.labels))
        self._row = np.zeros((1, len(self._fields)), dtype=np.float32)
        self._running: Any = None
        if cfg.card is not None:
            if cfg.card_sha256 is not None:  # the card decides which inputs the model may act on: pin it too
                verify_file(Path(cfg.card), cfg.card_sha256, what=f"model {cfg.name!r} input card")
            self.card = InputCard.load(Path(cfg.card), cfg.inputs)

    def _find_prob_output(self, n: int) -> str:
        for out in self._session.get_outputs():
            shape = out.shape
            if "float" in out.type and len(shape) == 2 and shape[1] == n:
                return str(out.name)
        raise ModelError(f"model {self.name!r}: no output of shape [N, {n}] (one score per label); set output_name")

    def features(self, inputs: Mapping[str, Any], *more: Mapping[str, Any]) -> Any:
        """The model's input rows (one per event), in the declared field order."""
        try:
            return self._np.array([[e[f] for f in self._fields] for e in (inputs, *more)], dtype=self._np.float32)
        except KeyError as exc:
            raise ModelError(f"model {self.name!r}: event has no field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model {self.name!r}: non-numeric input: {exc}") from exc

    def run_raw(self, x: Any) -> Any:
        """One plain ``InferenceSession.run`` (the bench's baseline)."""
        return self._session.run([self.output_name], {self.input_name: x})[0]

    def predict(self, inputs: Mapping[str, Any], cancel: CancelFlag) -> StageAnswer:
        row = self._row  # one reused buffer: only the worker thread runs predictions
        try:
            for i, f in enumerate(self._fields):
                row[0, i] = inputs[f]
        except KeyError as exc:
            raise ModelError(f"model {self.name!r}: event has no field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model {self.name!r}: non-numeric input: {exc}") from exc
        probs = self._run_rows(row, cancel)
        answer = softmax_top(self.labels, probs[0].tolist())
        if self.card is not None:
            answer.verdict = self.card.check_rows(self._values((inputs,)))[0]
        return answer

    def predict_batch(self, batch: list[Mapping[str, Any]]) -> list[StageAnswer]:
        probs = self._run_rows(self.features(*batch), None)
        answers = [softmax_top(self.labels, row) for row in probs.tolist()]
        if self.card is not None:  # here, on the worker, a batch at a time: on the event loop it cost ~80 µs a decision
            for answer, verdict in zip(answers, self.card.check_rows(self._values(batch)), strict=True):
                answer.verdict = verdict
        return answers

    def _values(self, batch: Sequence[Mapping[str, Any]]) -> Any:
        """The inputs as float64 rows, as the card scores them (the model's rows are float32)."""
        return self._np.array([[float(e[f]) for f in self._fields] for e in batch], dtype=self._np.float64)

    def _run_rows(self, x: Any, cancel: CancelFlag | None) -> Any:
        options = self._ort.RunOptions()  # fresh per run: a late cancel must not stop the next run
        self._running = options
        try:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled before run")
            return self._session.run([self.output_name], {self.input_name: x}, options)[0]
        except Cancelled:
            raise
        except Exception as exc:
            if options.terminate:
                raise Cancelled("terminated at deadline") from exc
            raise ModelError(f"model {self.name!r}: run failed: {exc}") from exc
        finally:
            self._running = None

    def call(self, inputs: Mapping[str, Any], deadline: float) -> Any:
        handle = super().call(inputs, deadline)
        original = handle.cancel

        def cancel() -> None:
            original()
            running, cancels = self._running, self.running_cancels
            # Stop the run only when every call in it is cancelled: a batch may hold calls still in time.
            if running is not None and cancels and all(c.is_set() for c in cancels):
                running.terminate = True  # onnxruntime stops the run at its next check

        handle.cancel = cancel  # type: ignore[method-assign]
        return handle
