"""The model-stage interface the pipeline calls, and a worker-thread base for backends.

A stage answers a label distribution for an event. Each stage owns one worker thread
(runtimes like llama.cpp are not thread-safe, and a 2-core box gains nothing from more),
so calls queue; the stage estimates the queue wait so the pipeline can shed load
(``overloaded``) instead of waiting past a deadline. A call that overruns its deadline is
cancelled: the backend stops at its next boundary (ONNX Runtime's ``terminate``, a token
for llama.cpp) or the result is kept as a late answer.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from agentd.errors import ModelError


@dataclass(frozen=True)
class StageAnswer:
    """A model's answer: the top label, its confidence, and the full distribution."""

    label: str
    confidence: float
    scores: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Cancelled(Exception):
    """The call was cancelled before or while it ran."""


@dataclass
class CallHandle:
    """A running stage call: await ``future``; ``cancel()`` asks the backend to stop."""

    future: asyncio.Future[StageAnswer]
    cancel_event: threading.Event

    def cancel(self) -> None:
        self.cancel_event.set()


class ModelStage(ABC):
    """What the pipeline needs from a model stage."""

    name: str
    version: str
    sha256: str | None
    labels: tuple[str, ...]

    @property
    def available(self) -> bool:
        return True

    @property
    def missing_reason(self) -> str | None:
        return None

    @abstractmethod
    def expected_wait_s(self) -> float:
        """Seconds a call made now would wait before its answer (queue + own run)."""

    @abstractmethod
    def call(self, inputs: Mapping[str, Any], deadline: float) -> CallHandle:
        """Start a call; ``deadline`` is ``time.monotonic()`` by which the answer is useful."""

    async def close(self) -> None:
        """Release the runtime."""

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


class ThreadedStage(ModelStage):
    """Runs ``predict`` on one worker thread; tracks queue depth and an EWMA of run time."""

    def __init__(self, *, name: str, version: str, sha256: str | None, labels: tuple[str, ...]) -> None:
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.labels = labels
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage-{name}")
        self._queued = 0
        self._ewma_s = 0.0
        self._lock = threading.Lock()

    @abstractmethod
    def predict(self, inputs: Mapping[str, Any], cancel: threading.Event) -> StageAnswer:
        """Run the model on the worker thread; stop early (raise Cancelled) once ``cancel`` is set."""

    def abort_running(self) -> None:
        """Interrupt a run in progress, if the runtime can (called from the event loop's thread)."""

    def expected_wait_s(self) -> float:
        with self._lock:
            return (self._queued + 1) * self._ewma_s

    def call(self, inputs: Mapping[str, Any], deadline: float) -> CallHandle:
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        with self._lock:
            self._queued += 1

        def run() -> StageAnswer:
            with self._lock:
                self._queued -= 1
            if cancel.is_set():
                raise Cancelled("cancelled while queued")
            t0 = time.perf_counter()
            try:
                answer = self.predict(inputs, cancel)
            except (Cancelled, ModelError):
                raise
            except Exception as exc:  # a runtime error is a model_error, never a crash
                raise ModelError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
            elapsed = time.perf_counter() - t0
            if not math.isfinite(answer.confidence) or not all(math.isfinite(v) for v in answer.scores.values()):
                raise ModelError(f"{self.name}: model returned a non-finite score")
            with self._lock:
                self._ewma_s = elapsed if self._ewma_s == 0 else 0.8 * self._ewma_s + 0.2 * elapsed
            return StageAnswer(answer.label, answer.confidence, answer.scores, round(elapsed * 1000, 3), answer.extra)

        fut = loop.run_in_executor(self._exec, run)
        return CallHandle(future=fut, cancel_event=cancel)

    async def close(self) -> None:
        self._exec.shutdown(wait=False, cancel_futures=True)


def softmax_top(labels: tuple[str, ...], probs: list[float]) -> StageAnswer:
    """The answer for a probability vector over ``labels``."""
    if len(probs) != len(labels):
        raise ModelError(f"model returned {len(probs)} scores for {len(labels)} labels")
    scores = {label: float(p) for label, p in zip(labels, probs, strict=True)}
    top = max(scores, key=lambda k: scores[k])
    return StageAnswer(label=top, confidence=scores[top], scores=scores)
