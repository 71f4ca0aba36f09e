"""A stage call's wait, its late answer and its cancellation, on a real worker thread (the delay stage)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from agentd.config.models import DelayModelConfig
from agentd.stages.base import Cancelled, StageAnswer
from agentd.stages.delay import DelayStage


def _stage(delay_ms: int, *, cancellable: bool) -> DelayStage:
    return DelayStage(DelayModelConfig(name="slow", backend="delay", version="1", delay_ms=delay_ms, label="ok",
                                       confidence=0.9, cancellable=cancellable))


@pytest.fixture
async def uncancellable() -> AsyncIterator[DelayStage]:
    stage = _stage(80, cancellable=False)
    yield stage
    await stage.close()


async def test_wait_gives_the_answer_in_time() -> None:
    stage = _stage(5, cancellable=True)
    try:
        answer = await stage.call({}, time.monotonic() + 1).wait(1.0)
        assert answer.label == "ok" and answer.confidence == 0.9
    finally:
        await stage.close()


async def test_wait_gives_up_at_its_budget_and_late_gives_the_answer_after(uncancellable: DelayStage) -> None:
    handle = uncancellable.call({}, time.monotonic() + 0.01)
    with pytest.raises(TimeoutError):
        await handle.wait(0.01)
    assert handle.answered() is None  # the worker is still running it
    answer = await asyncio.wait_for(handle.late(), 5)
    assert isinstance(answer, StageAnswer) and answer.label == "ok"
    assert handle.answered() is answer
    assert await handle.late() is answer  # asked again, once given: the same answer at once


async def test_late_asked_after_the_worker_answered_is_resolved_at_once(uncancellable: DelayStage) -> None:
    handle = uncancellable.call({}, time.monotonic() + 0.01)
    with pytest.raises(TimeoutError):
        await handle.wait(0.01)
    await asyncio.to_thread(_until, lambda: handle.answered() is not None)  # the worker has answered
    await asyncio.sleep(0.01)  # and the loop has (most likely) run its hand-back, which found no one asking
    late = handle.late()
    assert late.done() and late.result().label == "ok"


def _until(condition: Callable[[], bool], limit_s: float = 10.0) -> None:
    end = time.monotonic() + limit_s
    while not condition() and time.monotonic() < end:
        time.sleep(0.005)


async def test_a_cancelled_call_stops_the_worker_and_late_says_so() -> None:
    stage = _stage(2000, cancellable=True)
    try:
        handle = stage.call({}, time.monotonic() + 0.01)
        with pytest.raises(TimeoutError):
            await handle.wait(0.01)
        handle.cancel()
        with pytest.raises(Cancelled):  # stopped at its next 1 ms step: a run that went on would answer "ok"
            await asyncio.wait_for(handle.late(), 5)
    finally:
        await stage.close()


async def test_a_cancelled_waiter_leaves_the_call_to_its_worker(uncancellable: DelayStage) -> None:
    handle = uncancellable.call({}, time.monotonic() + 1)
    waiter = asyncio.ensure_future(handle.wait(1.0))
    await asyncio.sleep(0.01)
    waiter.cancel()  # a decision abandoned at shutdown
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (await asyncio.wait_for(handle.late(), 5)).label == "ok"
