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
import contextlib
import math
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentd.errors import ModelError

if TYPE_CHECKING:
    from agentd.stages.card import InputCard


@dataclass(frozen=True, slots=True)
class Verdict:
    """How far an input is from the training data: ``score`` > 1, or a ``field`` out of range, is out.

    Here, not in ``agentd.stages.card``, so that a node without models never imports numpy (12 MB)."""

    score: float
    field: str | None = None

    def outside(self, max_score: float) -> bool:
        return self.field is not None or not (self.score <= max_score)  # NaN is outside too


@dataclass(slots=True)
class StageAnswer:
    """A model's answer: the top label, its confidence, and the full distribution."""

    label: str
    confidence: float
    scores: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None  # the input card's, where the stage scored the input beside its answer


class Cancelled(Exception):
    """The call was cancelled before or while it ran."""


class CancelFlag:
    """A call's cancel flag: set on the event loop, read by the worker at its next boundary.

    A plain flag, not a ``threading.Event``: nothing waits on it, and an Event (a lock and a
    condition) cost ~3 µs of the event loop's time for every call."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass
class CallHandle:
    """A running stage call: ``await wait(budget)`` for its answer; ``cancel()`` asks the backend to stop."""

    future: asyncio.Future[StageAnswer]
    cancel_event: CancelFlag
    job: _Job | None = None  # a worker thread's call: where the worker leaves the answer
    stage: ThreadedStage | None = None  # the stage whose worker runs it

    def cancel(self) -> None:
        self.cancel_event.set()

    async def wait(self, budget_s: float) -> StageAnswer:
        """The answer within ``budget_s`` seconds, else TimeoutError; the call itself goes on
        (``late()`` gives what it answers after). One timer on the call's own future: cheaper
        than ``asyncio.timeout`` around ``asyncio.shield`` by ~10 µs of the loop's time a call."""
        fut = self.future
        if fut.done():
            return fut.result()
        timer = fut.get_loop().call_later(budget_s, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def late(self) -> asyncio.Future[StageAnswer]:
        """The answer that comes after ``wait`` gave up: resolved at once where the worker has
        given it, else when the worker hands it back."""
        job = self.job
        if job is None or not self.future.done():
            return self.future
        if job.late is None:
            job.late = self.future.get_loop().create_future()
            if job.result is not None:
                _settle(job.late, job.result)
        return job.late

    def model_late(self, budget_s: float) -> bool:
        """Whether the model made this call late: at its deadline a run had lasted more than half
        of the call's budget (this call's run, or the one it waited behind: a hung or slow model),
        or the call failed. A call that waited behind runs of a normal length was late through load
        (a busy event loop, the GIL, a burst of calls): no fault of the model's."""
        if self.job is None or self.stage is None or isinstance(self.job.result, BaseException):
            return True
        since = self.stage.running_since
        return since is not None and time.monotonic() - since > budget_s / 2

    def answered(self) -> StageAnswer | None:
        """The answer, if the backend has given one, even where the event loop has not yet taken
        it from the worker (a busy loop runs the hand-back late)."""
        result = self.job.result if self.job is not None else None
        if isinstance(result, StageAnswer):
            return result
        fut = self.future
        return fut.result() if fut.done() and not fut.cancelled() and fut.exception() is None else None


def _expire(fut: asyncio.Future[StageAnswer]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class ModelStage(ABC):
    """What the pipeline needs from a model stage."""

    name: str
    version: str
    sha256: str | None
    labels: tuple[str, ...]
    card: InputCard | None = None  # the training inputs' statistics, for the out-of-distribution gate

    @property
    def available(self) -> bool:
        return True

    @property
    def missing_reason(self) -> str | None:
        return None

    learns = False  # whether ``learn`` keeps what it is told (a text stage's examples)

    def learn_many(self, items: Sequence[tuple[str, Mapping[str, Any], str]]) -> int:
        """Take labelled events ``(key, inputs, label)`` as examples (blocking; off the event loop);
        how many changed. A stage that does not learn takes none."""
        return 0

    def abstains(self, inputs: Mapping[str, Any]) -> bool:
        """Whether the stage has nothing to read in this event (e.g. an empty text): it is not asked."""
        return False

    @abstractmethod
    def expected_wait_s(self) -> float:
        """Seconds a call made now would wait before its answer (queue + own run)."""

    @abstractmethod
    def call(self, inputs: Mapping[str, Any], deadline: float) -> CallHandle:
        """Start a call; ``deadline`` is ``time.monotonic()`` by which the answer is useful."""

    async def close(self) -> None:  # noqa: B027 - most stages have nothing to release
        """Release the runtime."""

    def busy(self) -> bool:
        """Whether the stage is working on or holding a call."""
        return False

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


@dataclass
class _Job:
    inputs: Mapping[str, Any]
    cancel: CancelFlag
    future: asyncio.Future[StageAnswer]
    deadline: float = math.inf
    result: StageAnswer | BaseException | None = None  # set by the worker before it hands the answer back
    late: asyncio.Future[StageAnswer] | None = None  # asked for after ``CallHandle.wait`` gave up


class ThreadedStage(ModelStage):
    """Runs the model on one worker thread that owns the runtime.

    Calls queue; the worker takes every call queued at that moment as one batch
    (``predict_batch``: backends that can, like ONNX Runtime, run it as one tensor) and
    hands the answers back to the event loop in one wake-up. At low load a batch is one
    call; under load this saves a thread hand-off per call. Tracks the queue depth and an
    EWMA of the run time per call, for load shedding.
    """

    max_batch = 1
    nice = 0  # niceness of the worker thread (and of the threads a runtime starts from it)

    def __init__(self, *, name: str, version: str, sha256: str | None, labels: tuple[str, ...]) -> None:
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.labels = labels
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._queued = 0
        self._ewma_s = 0.0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.running_cancels: list[CancelFlag] = []  # the cancel flags of the calls now running
        self.current_deadline = math.inf  # the running call's deadline (time.monotonic()), for backends that use spare time
        self.running_since: float | None = None  # time.monotonic() at which the running batch began
        self._closing = False
        self._thread = threading.Thread(target=self._work, name=f"stage-{name}", daemon=True)
        self._thread.start()

    @abstractmethod
    def predict(self, inputs: Mapping[str, Any], cancel: CancelFlag) -> StageAnswer:
        """Run the model on the worker thread; stop early (raise Cancelled) once ``cancel`` is set."""

    def predict_batch(self, batch: list[Mapping[str, Any]]) -> list[StageAnswer]:
        """Answer several events in one run; the default runs them one by one."""
        never = CancelFlag()
        return [self.predict(inputs, never) for inputs in batch]

    def expected_wait_s(self) -> float:
        with self._lock:
            return (self._queued + 1) * self._ewma_s

    def call(self, inputs: Mapping[str, Any], deadline: float) -> CallHandle:
        loop = asyncio.get_running_loop()
        self._loop = loop
        job = _Job(inputs, CancelFlag(), loop.create_future(), deadline)
        with self._lock:
            self._queued += 1
        self._jobs.put(job)
        return CallHandle(future=job.future, cancel_event=job.cancel, job=job, stage=self)

    def _work(self) -> None:
        if self.nice:  # Linux: a thread is a task with its own nice value, inherited by threads it starts
            with contextlib.suppress(OSError, AttributeError):  # not permitted, or not Linux: normal priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._jobs.put(None)
                    break
                batch.append(nxt)
            with self._lock:
                self._queued -= len(batch)
            results = self._run(batch)
            for j, r in zip(batch, results, strict=True):
                j.result = r
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(_deliver, batch, results)
                except RuntimeError:  # the loop closed meanwhile
                    return

    def _run(self, batch: list[_Job]) -> list[StageAnswer | BaseException]:
        live = [] if self._closing else [j for j in batch if not j.cancel.is_set()]
        out: dict[int, StageAnswer | BaseException] = {id(j): Cancelled("cancelled while queued") for j in batch}
        if not live:
            return [out[id(j)] for j in batch]
        t0 = time.perf_counter()
        self.running_since = time.monotonic()
        self.running_cancels = [j.cancel for j in live]
        self.current_deadline = min(j.deadline for j in live)
        try:
            if len(live) == 1:
                answers = [self.predict(live[0].inputs, live[0].cancel)]
            else:
                answers = self.predict_batch([j.inputs for j in live])
        except (Cancelled, ModelError) as exc:
            answers = [exc] * len(live)  # type: ignore[list-item]
        except Exception as exc:  # a runtime error is a model_error, never a crash
            answers = [ModelError(f"{self.name}: {type(exc).__name__}: {exc}")] * len(live)  # type: ignore[list-item]
        finally:
            self.running_cancels = []
            self.current_deadline = math.inf
            self.running_since = None
        elapsed = time.perf_counter() - t0
        if isinstance(answers[0], StageAnswer):  # a cancelled or failed run says little about run time
            per_call = elapsed / len(live)
            with self._lock:
                self._ewma_s = per_call if self._ewma_s == 0 else 0.8 * self._ewma_s + 0.2 * per_call
        for j, a in zip(live, answers, strict=True):
            out[id(j)] = self._checked(a, elapsed) if isinstance(a, StageAnswer) else a
        return [out[id(j)] for j in batch]

    def _checked(self, a: StageAnswer, elapsed: float) -> StageAnswer | ModelError:
        if not math.isfinite(a.confidence) or not all(math.isfinite(v) for v in a.scores.values()):
            return ModelError(f"{self.name}: model returned a non-finite score")
        return StageAnswer(a.label, a.confidence, a.scores, round(elapsed * 1000, 3), a.extra, a.verdict)

    def busy(self) -> bool:
        """Whether a call is running or queued (a shadow call then waits its turn: skipped)."""
        with self._lock:
            return self._queued > 0 or bool(self.running_cancels)

    async def close(self) -> None:
        """Refuse queued calls, let the running one finish (or stop), and join the worker (5 s at most)."""
        self._closing = True
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join, 5.0)


def _deliver(batch: list[_Job], results: list[StageAnswer | BaseException]) -> None:
    for job, result in zip(batch, results, strict=True):
        fut = job.future if not job.future.done() else job.late
        if fut is not None and not fut.done():
            _settle(fut, result)


def _settle(fut: asyncio.Future[StageAnswer], result: StageAnswer | BaseException) -> None:
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


def softmax_top(labels: tuple[str, ...], probs: list[float]) -> StageAnswer:
    """The answer for a probability vector over ``labels``."""
    if len(probs) != len(labels):
        raise ModelError(f"model returned {len(probs)} scores for {len(labels)} labels")
    top = max(range(len(probs)), key=probs.__getitem__)
    return StageAnswer(labels[top], float(probs[top]), dict(zip(labels, map(float, probs), strict=True)))
